"""The lambda curve of IWU on a common scale (mt-grpo-scaled, issue 20 item 1), beside GRPO and the paper's score.

Runs `mtgrpo bench` on each suite and seed set for grpo, mt-grpo:0.2 (the paper's score with the mean I_k) and
mt-grpo-scaled at each lambda, prints worst and average accuracy at equal steps and at GRPO's generation budget,
and draws worst vs average at the budget, one point per lambda (docs/figures/lambda_scaled.png).

    .venv/bin/python benchmarks/bench_lambda.py --out runs/lambda
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from mtgrpo_backends.cli import main as mtgrpo

LAMS = (0.5, 1.0, 1.5, 2.0, 3.0, 5.0)
SEED_SETS = {"0-4": "0,1,2,3,4", "5-9": "5,6,7,8,9"}


def run(suite: str, seeds: str, out: Path) -> dict[str, dict[str, float]]:
    """{method: worst, average, worst@budget, average@budget} (means over the seeds), from one bench run."""
    methods = ["grpo", "mt-grpo:0.2", *[f"mt-grpo-scaled:{lam:g}" for lam in LAMS]]
    argv = ["bench", "--suite", suite, "--seeds", seeds, "--methods", ",".join(methods), "--quiet"]
    with contextlib.redirect_stdout(io.StringIO()):
        code = mtgrpo([*argv, "--out", str(out)])
    if code != 0:
        raise SystemExit(f"mtgrpo {' '.join(argv)} exited {code}")
    summary = {m: r["summary"] for m, r in json.loads((out / "results.json").read_text())["methods"].items()}
    return {
        m: {
            "worst": 100 * s["worst"]["mean"],
            "average": 100 * s["average"]["mean"],
            "worst@budget": 100 * s["budget"]["worst"]["mean"],
            "average@budget": 100 * s["budget"]["average"]["mean"],
        }
        for m, s in summary.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/lambda"))
    parser.add_argument("--suites", default="paper3,paper9")
    parser.add_argument("--figure", type=Path, default=Path("docs/figures/lambda_scaled.png"))
    args = parser.parse_args()
    suites = args.suites.split(",")
    fig, axes = plt.subplots(1, len(suites), figsize=(5.5 * len(suites), 4.2), squeeze=False)
    for ax, suite in zip(axes[0], suites, strict=True):
        for label, seeds in SEED_SETS.items():
            rows = run(suite, seeds, args.out / f"{suite}-{label}")
            print(f"\n{suite}, seeds {label}: worst / average % at equal steps, then at GRPO's generation budget")
            for method, r in rows.items():
                print(
                    f"  {method:<20} {r['worst']:5.1f} / {r['average']:5.1f}   @budget "
                    f"{r['worst@budget']:5.1f} / {r['average@budget']:5.1f}"
                )
            curve = [rows[f"mt-grpo-scaled:{lam:g}"] for lam in LAMS]
            line = ax.plot(
                [r["average@budget"] for r in curve],
                [r["worst@budget"] for r in curve],
                "o-",
                label=f"mt-grpo-scaled, seeds {label}",
            )[0]
            for lam, r in zip(LAMS, curve, strict=True):
                ax.annotate(
                    f"{lam:g}",
                    (r["average@budget"], r["worst@budget"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                    color=line.get_color(),
                )
            for method, marker in (("grpo", "s"), ("mt-grpo:0.2", "^")):
                r = rows[method]
                ax.plot(
                    r["average@budget"],
                    r["worst@budget"],
                    marker,
                    color=line.get_color(),
                    alpha=0.6,
                    label=f"{method}, seeds {label}",
                )
        ax.set(
            title=f"{suite}: at GRPO's generation budget (labels: lambda)",
            xlabel="average accuracy %",
            ylabel="worst-task accuracy %",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    args.figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.figure, dpi=110)
    print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
