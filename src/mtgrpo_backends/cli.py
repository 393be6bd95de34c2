"""The `mtgrpo` command: subcommands are registered by the backends that own them."""

from __future__ import annotations

import argparse
import importlib
import sys

# module that defines `add_parser(subparsers)` for each subcommand group; imported lazily so that
# `mtgrpo bench` does not import torch.
_SUBCOMMANDS: dict[str, str] = {
    "bench": "mtgrpo_backends.simulated.cli",
    "train": "mtgrpo_backends.torch.cli",
    "demo": "mtgrpo_backends.torch.cli",
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `mtgrpo` console script."""
    args_list = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="mtgrpo", description="Robust multi-task GRPO post-training.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(_SUBCOMMANDS) + "}")
    wanted = args_list[0] if args_list and args_list[0] in _SUBCOMMANDS else None
    modules = {_SUBCOMMANDS[wanted]} if wanted else set(_SUBCOMMANDS.values())
    for module in sorted(modules):
        importlib.import_module(module).add_parser(sub)
    args = parser.parse_args(args_list)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
