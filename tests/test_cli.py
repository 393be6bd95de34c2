"""One command-line vocabulary: every flag validated with its name, the options reach the controller, bench never
imports torch, and docs/options.md lists every flag of every command."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mtgrpo_backends.cli import main
from mtgrpo_backends.options import HarnessOptions, RuleOptions, parse
from mtgrpo_backends.simulated.cli import BenchArgs
from mtgrpo_core.sampling.config import FILTERS
from mtgrpo_core.sampling.targets import COUNT_SCHEMES
from mtgrpo_core.settings import SamplerSettings
from mtgrpo_core.signals import IMPROVEMENT_REDUCTIONS
from mtgrpo_core.weighting.rules import IWU_OPTIMIZERS

ROOT = Path(__file__).resolve().parents[1]


def _bench(*args: str) -> int:
    return main(["bench", "--suite", "paper3", "--steps", "6", "--quiet", "--workers", "1", *args])


def test_top_level_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0 and "bench" in capsys.readouterr().out
    assert main(["frobnicate"]) == 2
    assert "command must be one of ['bench', 'train', 'demo'], got 'frobnicate'" in capsys.readouterr().err


def test_list_flags_take_commas_or_spaces() -> None:
    args = parse(BenchArgs, ["--seeds", "0,1", "2", "--methods", "grpo,dapo", "--thresholds", "0.2"], "b", "")
    assert args.harness.seeds == (0, 1, 2) and args.harness.methods == ("grpo", "dapo")
    assert args.harness.thresholds == (0.2,) and args.sampler == SamplerSettings()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--steps", "x"], "Error parsing --steps"),
        (["--seeds", "a"], "Error parsing --seeds"),
        (["--sampler.filtering", "bogus"], "invalid choice 'bogus' for argument '--sampler.filtering'"),
        (["--rule.optimizer", "adam"], "invalid choice 'adam' for argument '--rule.optimizer'"),
        (["--sampler.max-rounds", "-1"], "--sampler.max-rounds -1: max_rounds must be"),
        (["--sampler.oversample", "0.5"], "--sampler.oversample 0.5: oversample must be"),
        (["--sampler.planner", "psychic"], "--sampler.planner 'psychic': planner must be one of"),
        (["--rule.lr", "0"], "--rule.lr 0.0 (method 'mt-grpo:0.2'): lr must be"),
        (["--rule.alpha", "0.3", "--methods", "mt-grpo:0.2"], "--rule.alpha 0.3: no chosen method's rule takes"),
        (
            ["--rule.lam-start", "0.5", "--methods", "mt-grpo-scaled:3"],
            "--rule.lam-start 0.5 (method 'mt-grpo-scaled:3'): lam_start and lam_ramp go together",
        ),
        (["--rule.lam-ramp", "0", "--rule.lam-start", "1", "--methods", "mt-grpo-scaled"], "lam_ramp=0"),
        (["--workers", "0"], "--workers must be an integer >= 1, got 0"),
        (["--seeds", "1,1"], "--seeds must be distinct integers >= 0, got [1, 1]"),
        (["--thresholds", "1.5"], "--thresholds must lie in (0, 1], got [1.5]"),
        (["--group-size", "1"], "--group-size must be an integer >= 2, got 1"),
    ],
)
def test_bad_values_are_refused_naming_the_flag(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _bench(*flags) == 2
    assert message in " ".join(capsys.readouterr().err.split())


def test_sampler_and_rule_options_reach_the_controller(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["--methods", "grpo,dapo,mt-grpo:0.2,sec-dapo", "--seeds", "0", "--sampler.max-rounds", "0"]
    assert _bench(*common, "--out", str(tmp_path / "a")) == 0
    assert _bench(*common, "--rule.lr", "0.5", "--rule.alpha", "0.9", "--out", str(tmp_path / "b")) == 0
    a, b = (json.loads((tmp_path / d / "results.json").read_text())["methods"] for d in "ab")
    assert all(r == 1 for r in a["dapo"]["runs"][0]["rounds"])  # N_rs = 0: one request per step
    assert a["grpo"]["runs"][0]["weights"] == b["grpo"]["runs"][0]["weights"]  # uniform takes neither option
    for m in ("mt-grpo:0.2", "sec-dapo"):
        assert a[m]["runs"][0]["weights"] != b[m]["runs"][0]["weights"]
    assert "max_rounds" not in json.dumps(a["dapo"]["summary"])  # settings live in settings, not per method


def test_rule_options_go_only_to_the_rules_that_take_them() -> None:
    rule = RuleOptions(lr=0.1, alpha=0.3)
    assert rule.kwargs_for("mt-grpo:0.2") == {"lr": 0.1} and rule.kwargs_for("sec-dapo") == {"alpha": 0.3}
    assert rule.kwargs_for("grpo") == {}


def test_choices_match_the_core() -> None:
    hints = typing.get_type_hints(SamplerSettings)
    assert set(typing.get_args(typing.get_args(hints["filtering"])[0])) == set(FILTERS)
    assert set(typing.get_args(typing.get_args(hints["targets"])[0])) == set(COUNT_SCHEMES)
    optimizer = typing.get_type_hints(RuleOptions)["optimizer"]
    assert set(typing.get_args(typing.get_args(optimizer)[0])) == set(IWU_OPTIMIZERS)
    reduce = typing.get_args(typing.get_type_hints(BenchArgs)["improvement_reduce"])[0]
    assert set(typing.get_args(reduce)) == set(IMPROVEMENT_REDUCTIONS)


def test_bench_does_not_import_torch() -> None:
    code = (
        "import sys; from mtgrpo_backends.cli import main; "
        "rc = main(['bench', '--steps', '2', '--seeds', '0', '--methods', 'mt-grpo:0.2', '--quiet']); "
        "assert rc == 0, rc; assert 'torch' not in sys.modules, 'bench imported torch'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120)


def _strip(tp: Any) -> tuple[Any, list[Any]]:
    meta: list[Any] = []
    while typing.get_origin(tp) is typing.Annotated:
        meta += list(tp.__metadata__)
        tp = typing.get_args(tp)[0]
    return tp, meta


def flags_of(cls: type, prefix: str = "") -> Iterator[str]:
    """Every flag tyro makes of a command dataclass (nested groups: `--group.x`, or no prefix when flat)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        tp, meta = _strip(hints[f.name])
        if dataclasses.is_dataclass(tp):
            flat = any(getattr(m, "name", None) == "" for m in meta)
            yield from flags_of(tp, prefix if flat else f"{prefix}{f.name}.")
        else:
            yield "--" + prefix + f.name.replace("_", "-")


def test_options_doc_lists_every_flag() -> None:
    from mtgrpo_backends.torch.cli import TrainArgs
    from mtgrpo_backends.torch.demo import DemoArgs

    spec = importlib.util.spec_from_file_location("trl_example", ROOT / "examples" / "trl_mtgrpo.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules["trl_example"] = example
    spec.loader.exec_module(example)
    doc = (ROOT / "docs" / "options.md").read_text()
    commands = (BenchArgs, TrainArgs, DemoArgs, example.ExampleArgs, HarnessOptions)
    missing = sorted({f for cls in commands for f in flags_of(cls) if f"| `{f}` |" not in doc})
    assert not missing, f"docs/options.md lacks {missing}"


def test_train_rule_options_reach_the_controller() -> None:
    from mtgrpo_backends.torch.config import TrainConfig
    from mtgrpo_backends.torch.model import CharGPT, CharGPTConfig
    from mtgrpo_backends.torch.state import make_state
    from mtgrpo_backends.torch.tasks import CharTokenizer, get_suite

    tokenizer = CharTokenizer()
    model = CharGPT(CharGPTConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_embd=16, n_head=2))
    config = TrainConfig(method="mt-grpo:0.2", rule={"lr": 0.5}, batch_size=4, group_size=4, minibatches=1)
    state = make_state(config, model, get_suite("tiny3"), tokenizer)
    assert state.controller.rule.lr == 0.5  # type: ignore[attr-defined]
