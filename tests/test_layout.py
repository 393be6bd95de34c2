"""The source layout keeps two promises of issue 19: no import cycle anywhere in src (a module that needs another's
type names a Protocol instead), and no source file of 400 lines or more."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The src modules `name` imports, at any depth of its code (TYPE_CHECKING blocks and functions included);
    `from package import submodule` is an import of the submodule, not of the package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            subs = {f"{base}.{a.name}" for a in node.names} & set(modules)
            found |= subs if len(subs) == len(node.names) else {base, *subs}
    return (found & set(modules)) - {name}


def test_no_import_cycle_in_src() -> None:
    modules = _modules()
    edges = {name: _imports(name, path, modules) for name, path in modules.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for nxt in sorted(edges[name]):
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[name] = 2

    for name in sorted(edges):
        if name not in state:
            visit(name, [name])


def test_every_source_file_is_under_400_lines() -> None:
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) >= 400}
    assert not long, f"source files of 400 lines or more: {long}"


def test_the_core_is_a_few_grouped_modules() -> None:
    """Issue 19, item 7: about 20 modules, grouped by the part of the algorithm they hold."""
    core = SRC / "mtgrpo_core"
    modules = [p for p in core.rglob("*.py") if p.name != "__init__.py"]
    assert len(modules) <= 23, sorted(str(p.relative_to(core)) for p in modules)
    groups = {p.name for p in core.iterdir() if (p / "__init__.py").is_file()}
    assert groups == {"prompts", "reference", "sampling", "weighting"}
