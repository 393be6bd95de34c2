"""The synchronous conversation (steps_ahead = 0, the default) decides byte for byte as the recorded run of the code
before the streaming mode (tests/data/sync_conversation.json, written by tests/conversation_record.py at 2c1f9dd).

Every decision (requests, keys, tasks, staleness, kept, released, counts, targets) must be equal; the weights equal
to 1e-12: numpy's exp, under the softmax, picks a SIMD kernel by CPU, and the recorded weights differ from this
code's in the last bit on some machines (2.8e-17 to 1.1e-16 on an AVX-512 host, the decisions identical)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conversation_record import CASES, record

RECORDED = json.loads((Path(__file__).parent / "data" / "sync_conversation.json").read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_synchronous_conversation_is_unchanged(name: str) -> None:
    method, sampler = CASES[name]
    got = json.loads(json.dumps(record(method, **sampler), separators=(",", ":")))
    assert len(got) == len(RECORDED[name])
    for step, (now, then) in enumerate(zip(got, RECORDED[name], strict=True)):
        assert {k: x for k, x in now.items() if k != "weights"} == {k: x for k, x in then.items() if k != "weights"}
        assert now["weights"] == pytest.approx(then["weights"], rel=0, abs=1e-12), step


def test_the_record_covers_carry_over_rounds_and_releases() -> None:
    """The recorded runs exercise what the streaming mode touches: carried groups, resampling rounds, releases."""
    lean = RECORDED["mt-grpo"]
    assert any(s > 0 for step in lean for s in step["staleness"])
    assert any(len(step["requests"]) > 1 for name in RECORDED for step in RECORDED[name])
    assert any(step["released"] for step in lean)
