"""The synchronous conversation (steps_ahead = 0, the default) decides byte for byte as the recorded run of the code
before the streaming mode (tests/data/sync_conversation.json, written by tests/conversation_record.py at 2c1f9dd)."""

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
    assert got == RECORDED[name]


def test_the_record_covers_carry_over_rounds_and_releases() -> None:
    """The recorded runs exercise what the streaming mode touches: carried groups, resampling rounds, releases."""
    lean = RECORDED["mt-grpo"]
    assert any(s > 0 for step in lean for s in step["staleness"])
    assert any(len(step["requests"]) > 1 for name in RECORDED for step in RECORDED[name])
    assert any(step["released"] for step in lean)
