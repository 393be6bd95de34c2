"""Opt-in: the reference suite against the reference's own data files.

Set ``MTGRPO_REFERENCE_REPO`` to a checkout of github.com/rsshyam/MT-GRPO (read at commit 016d0d7); the
test reads its ``data/combined/*.parquet``. Without it the tests are skipped.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from mtgrpo_backends.trl.reference_prompts import reference_prompt
from mtgrpo_backends.trl.rewards import score_response
from mtgrpo_core.protocols import CORRECT, UNFORMATTED

REPO = os.environ.get("MTGRPO_REFERENCE_REPO")
pytestmark = pytest.mark.skipif(not REPO, reason="set MTGRPO_REFERENCE_REPO to a checkout of rsshyam/MT-GRPO")

# the reference's final-answer sentences, and reasoning-gym 0.1.25's, which the reference suite replaces
_ZEBRA = (
    "? Provide only the name of the person as your final answer and put in in \\boxed{}, for example: \\boxed{Alice}.",
    "?? Provide only the name of the person as your final answer.",
)
_ARC = (
    "Your final answer must be placed in \\boxed{} and should be just the test output grid itself.",
    "Your final answer should be just the test output grid itself.",
)
_FAMILY = {"countdown": "countdown", "zebra": "zebra", "arc": "arc1d"}


def _rows(name: str) -> list[dict[str, Any]]:
    import pandas

    path = Path(str(REPO)) / "data" / "combined" / f"{name}.parquet"
    if not path.exists():
        pytest.skip(f"{path} is not in the checkout")
    return list(pandas.read_parquet(path).to_dict("records"))


@pytest.mark.parametrize("name", ["test_countdown", "test_zebra", "test_arc", "train_countdown"])
def test_reference_suite_rebuilds_and_scores_every_reference_row(name: str) -> None:
    rows = _rows(name)
    for row in rows:
        family = _FAMILY[row["extra_info"]["type"]]
        truth = row["reward_model"]["ground_truth"]
        split = row["data_source"].rsplit("-", 1)[1]
        scoring = f"reference-{split}"
        formatted = 0.1 if split == "train" else 0.0
        if family == "countdown":
            numbers = [int(n) for n in truth["numbers"].split(",")]
            ours = reference_prompt(family, "", numbers, int(truth["target"]))
            fields: dict[str, Any] = {"numbers": numbers, "target": int(truth["target"])}
            answer = " + ".join(map(str, numbers))
            expected = CORRECT if sum(map(Fraction, numbers)) == truth["target"] else formatted
        else:
            old, new = _ZEBRA if family == "zebra" else _ARC
            ours = reference_prompt(family, row["extra_info"]["question"].replace(old, new))
            fields, answer, expected = {"answer": truth["target"]}, truth["target"], CORRECT
        assert ours == row["prompt"][0]["content"]
        assert score_response(family, f"So\n\\boxed{{{answer}}}", **fields, scoring=scoring) == expected
        assert score_response(family, f"\\boxed{{{answer}}}\n", **fields, scoring=scoring) == UNFORMATTED
        if family != "countdown":
            assert score_response(family, "\\boxed{x 1}", **fields, scoring=scoring) == formatted
    assert len(rows) in (800, 30_000)
