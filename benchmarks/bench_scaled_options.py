"""Options of IWU on a common scale against fixed lam (issue 20): a lam ramp (item 5) and the cost tilt (item 2).

`--rule.lam-start S --rule.lam-ramp R` moves mt-grpo-scaled's lam from S to the method's lam over R weight updates;
`--rule.cost-tilt K` tilts the weights by the sampler's acceptance estimate to the power K (weighting/scaled.py).
Runs `mtgrpo bench` on paper3 and paper9 for seeds 0-4 (where the ramps were chosen) and 5-9 (held out), one bench
run per rule setting (rule options go to every scaled method of a run), and prints worst and average accuracy at
equal steps and at GRPO's generation budget, with the groups generated per step.

    .venv/bin/python benchmarks/bench_scaled_options.py --out runs/scaled_options
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
    "cost tilt 0.5": ("grpo,mt-grpo-scaled:2", ["--rule.cost-tilt", "0.5"]),
    "cost tilt 1": ("grpo,mt-grpo-scaled:2", ["--rule.cost-tilt", "1"]),
}


def run(suite: str, seeds: str, methods: str, flags: list[str], out: Path) -> dict[str, list[float]]:
    """{method: [worst, average, worst@budget, average@budget, groups generated per step]} (means over the seeds;
    accuracies in %) of one bench run."""
    argv = ["bench", "--suite", suite, "--seeds", seeds, "--methods", methods, "--steps", str(STEPS), *flags]
    with contextlib.redirect_stdout(io.StringIO()):
        code = mtgrpo([*argv, "--quiet", "--out", str(out)])
    if code != 0:
        raise SystemExit(f"mtgrpo {' '.join(argv)} exited {code}")
    results = json.loads((out / "results.json").read_text())["methods"]
    return {
        m: [100 * s[a]["mean"] for a in ("worst", "average")]
        + [100 * s["budget"][a]["mean"] for a in ("worst", "average")]
        + [s["generated_per_step"]["mean"]]
        for m, s in ((m, r["summary"]) for m, r in results.items())
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/scaled_options"))
    parser.add_argument("--suites", default="paper3,paper9")
    args = parser.parse_args()
    for suite in args.suites.split(","):
        for label, seeds in SEED_SETS.items():
            print(f"\n{suite}, seeds {label}: worst / average % at equal steps, then at GRPO's generation budget")
            print("| method | worst | average | worst @budget | average @budget | generated / step |")
            print("|---|---|---|---|---|---|")
            for name, (methods, flags) in RUNS.items():
                rows = run(suite, seeds, methods, flags, args.out / f"{suite}-{label}-{name.replace(' ', '')}")
                for method, values in rows.items():
                    if method == "grpo" and name != "fixed":
                        continue
                    shown = method if name == "fixed" else f"{method} ({name})"
                    print(f"| {shown} | " + " | ".join(f"{x:.1f}" for x in values) + " |")


if __name__ == "__main__":
    main()
