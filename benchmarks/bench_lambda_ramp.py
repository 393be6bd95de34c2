"""A lam ramp for IWU on a common scale (issue 20 item 5, what was tried): lam rising over the run against fixed lam.

`--rule.lam-start S --rule.lam-ramp R` moves mt-grpo-scaled's lam from S to the method's lam over R weight updates
(weighting/scaled.py). Runs `mtgrpo bench` on paper3 and paper9 for seeds 0-4 (where the ramps were chosen) and
5-9 (held out), one bench run per rule setting (rule options go to every scaled method of a run), and prints
worst and average accuracy at equal steps and at GRPO's generation budget.

    .venv/bin/python benchmarks/bench_lambda_ramp.py --out runs/lambda_ramp
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

from mtgrpo_backends.cli import main as mtgrpo

SEED_SETS = {"0-4": "0,1,2,3,4", "5-9": "5,6,7,8,9"}
STEPS = 720  # paper3's and paper9's run length: each ramp spans the run
# label -> (methods, rule flags); every run has grpo, whose generation is the budget
RUNS: dict[str, tuple[str, list[str]]] = {
    "fixed": ("grpo,mt-grpo-scaled:1.5,mt-grpo-scaled:2,mt-grpo-scaled:3", []),
    "ramp 1->2": ("grpo,mt-grpo-scaled:2", ["--rule.lam-start", "1", "--rule.lam-ramp", str(STEPS)]),
    "ramp 0.5->3": ("grpo,mt-grpo-scaled:3", ["--rule.lam-start", "0.5", "--rule.lam-ramp", str(STEPS)]),
}


def run(suite: str, seeds: str, methods: str, flags: list[str], out: Path) -> dict[str, list[float]]:
    """{method: [worst, average, worst@budget, average@budget]} (% means over the seeds) of one bench run."""
    argv = ["bench", "--suite", suite, "--seeds", seeds, "--methods", methods, "--steps", str(STEPS), *flags]
    with contextlib.redirect_stdout(io.StringIO()):
        code = mtgrpo([*argv, "--quiet", "--out", str(out)])
    if code != 0:
        raise SystemExit(f"mtgrpo {' '.join(argv)} exited {code}")
    results = json.loads((out / "results.json").read_text())["methods"]
    return {
        m: [100 * s[a]["mean"] for a in ("worst", "average")]
        + [100 * s["budget"][a]["mean"] for a in ("worst", "average")]
        for m, s in ((m, r["summary"]) for m, r in results.items())
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/lambda_ramp"))
    parser.add_argument("--suites", default="paper3,paper9")
    args = parser.parse_args()
    for suite in args.suites.split(","):
        for label, seeds in SEED_SETS.items():
            print(f"\n{suite}, seeds {label}: worst / average % at equal steps, then at GRPO's generation budget")
            print("| method | worst | average | worst @budget | average @budget |\n|---|---|---|---|---|")
            for name, (methods, flags) in RUNS.items():
                rows = run(suite, seeds, methods, flags, args.out / f"{suite}-{label}-{name.replace(' ', '')}")
                for method, values in rows.items():
                    if method == "grpo" and name != "fixed":
                        continue
                    shown = method if name == "fixed" else f"{method} ({name})"
                    print(f"| {shown} | " + " | ".join(f"{x:.1f}" for x in values) + " |")


if __name__ == "__main__":
    main()
