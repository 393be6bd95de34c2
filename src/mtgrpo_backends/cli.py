"""The `mtgrpo` command: each subcommand lives in the backend that owns it and is imported only when chosen, so
that `mtgrpo bench` does not import torch. Flags are one vocabulary across commands (docs/options.md)."""

from __future__ import annotations

import importlib
import os
import platform
import re
import sys
from collections.abc import Sequence
from pathlib import Path

# subcommand -> (module defining `main(argv) -> int`, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "bench": ("mtgrpo_backends.simulated.cli", "compare weighting methods on a simulated multi-task policy"),
    "train": ("mtgrpo_backends.torch.cli", "train a small policy on a built-in suite with one method"),
    "demo": ("mtgrpo_backends.torch.demo", "compare methods x seeds from one warm start (tiny3 by default)"),
}

# The CPU kernels of every x86-64 machine with AVX2 and FMA (nearly all since 2013): torch's vectorised ATen kernels,
# MKL and oneDNN otherwise take AVX-512 code where the CPU has it, which sums in another order, so that the same
# warm-up and the same run would give other numbers there. Set before torch is imported; a value the user set wins.
PINNED_CPU_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def _has_avx2_fma() -> bool:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = re.search(r"^flags\s*:(.*)$", text, flags=re.MULTILINE)
    return flags is not None and {"avx2", "fma"} <= set(flags.group(1).split())


def pin_cpu_kernels() -> dict[str, str]:
    """Pin torch, MKL and oneDNN to their AVX2 kernels on x86-64 Linux machines that have AVX2 and FMA, unless
    torch is already imported (too late) or the variables are set; returns what was set."""
    if "torch" in sys.modules or platform.machine().lower() not in ("x86_64", "amd64") or not _has_avx2_fma():
        return {}
    pinned = {k: v for k, v in PINNED_CPU_KERNELS.items() if k not in os.environ}
    os.environ.update(pinned)
    return pinned


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
    if args[0] in ("train", "demo"):
        pin_cpu_kernels()
    module = importlib.import_module(SUBCOMMANDS[args[0]][0])
    return int(module.main(args[1:]))


if __name__ == "__main__":
    raise SystemExit(main())
