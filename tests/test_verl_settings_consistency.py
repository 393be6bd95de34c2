"""verl's row of tests/test_settings_consistency.py: the same bad sampler setting, given as mtgrpo.sampler.X, is
refused when the settings are built with the core's own message."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("verl")

from mtgrpo_backends.verl.config import MTGRPOSettings
from tests.test_settings_consistency import BAD, IDS


@pytest.mark.parametrize(("name", "value", "message"), BAD, ids=IDS)
def test_verl_refuses_it_with_the_cores_message(name: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        MTGRPOSettings(sampler={"carry_over": 0, name: value})
    assert str(raised.value) == f"mtgrpo.sampler.{name} {value!r}: {message}"
