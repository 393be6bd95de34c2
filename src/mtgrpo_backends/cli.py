"""The `mtgrpo` command: each subcommand lives in the backend that owns it and is imported only when chosen, so
that `mtgrpo bench` does not import torch. Flags are one vocabulary across commands (docs/options.md)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module defining `main(argv) -> int`, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("mtgrpo_backends.simulated.cli", "compare weighting methods on a simulated multi-task policy"),
    "train": ("mtgrpo_backends.torch.cli", "train a small policy on a built-in suite with one method"),
    "demo": ("mtgrpo_backends.torch.demo", "compare methods x seeds from one warm start (tiny3 by default)"),
}

USAGE = "usage: mtgrpo {" + ",".join(SUBCOMMANDS) + "} [OPTIONS]  (mtgrpo COMMAND --help for its options)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `mtgrpo` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE + "\n\nRobust multi-task GRPO post-training.\n")
        print("\n".join(f"  {name:<6} {text}" for name, (_, text) in SUBCOMMANDS.items()))
        return 0 if args else 2
    if args[0] not in SUBCOMMANDS:
        print(f"{USAGE}\nmtgrpo: error: command must be one of {list(SUBCOMMANDS)}, got {args[0]!r}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[args[0]][0])
    return int(module.main(args[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
