"""The same bad sampler setting gets the same refusal in every backend (issue 19, item 3): the core's SamplerConfig
decides and each backend adds only the name of its own flag or field. Table-driven: each row goes through the core,
`mtgrpo bench`, `mtgrpo train` and TRL's MTGRPOConfig (verl: tests/test_verl_settings_consistency.py)."""

from __future__ import annotations

from typing import Any

import pytest

from mtgrpo_backends.cli import main
from mtgrpo_core.sampling.config import SamplerConfig
from mtgrpo_core.settings import SamplerSettings, Settings

# (setting, bad value, the core's message, with the method the setting needs to be read)
BAD: list[tuple[str, Any, str]] = [
    ("max_rounds", -1, "max_rounds must be >= 0, got -1"),
    ("planner", "psychic", "planner must be one of ['joint', 'paper', 'paper-ref', 'posterior'], got 'psychic'"),
    ("oversample", 0.5, "oversample must be in [1.0, inf], got 0.5"),
    ("confidence", 1.5, "confidence must be in (0.0, 1.0), got 1.5"),
    ("guard_floor", -0.1, "guard_floor must be in [0.0, 1.0), got -0.1"),
    ("max_inflation", 0.5, "max_inflation must be in [1.0, inf], got 0.5"),
    ("generation_cap", -1.0, "generation_cap must be in [0.0, inf], got -1.0"),
]
IDS = [row[0] for row in BAD]


def _flag(name: str, value: Any) -> list[str]:
    return [f"--sampler.{name.replace('_', '-')}", str(value)]


@pytest.mark.parametrize(("name", "value", "message"), BAD, ids=IDS)
def test_the_core_refuses_it(name: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        SamplerConfig(batch_size=8, group_size=4, **{name: value})
    assert str(raised.value) == message


@pytest.mark.parametrize(("name", "value", "message"), BAD, ids=IDS)
def test_bench_refuses_it_with_the_cores_message(
    name: str, value: Any, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "--steps", "1", "--seeds", "0", "--methods", "mt-grpo:0.2", "--quiet", *_flag(name, value)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("name", "value", "message"), BAD, ids=IDS)
def test_train_refuses_it_with_the_cores_message(
    name: str, value: Any, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["train", "--steps", "1", "--batch-size", "3", "--group-size", "2", "--no-cache", *_flag(name, value)]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert message in err and "warm" not in out  # refused before the warm-up


@pytest.mark.parametrize(("name", "value", "message"), BAD, ids=IDS)
def test_trl_refuses_it_with_the_cores_message(name: str, value: Any, message: str) -> None:
    pytest.importorskip("trl")
    from mtgrpo_backends.trl import MTGRPOConfig

    base = {"output_dir": "unused", "report_to": [], "use_cpu": True, "bf16": False}
    base |= {"per_device_train_batch_size": 8, "num_generations": 2, "method": "mt-grpo:0.2"}
    with pytest.raises(ValueError) as raised:
        MTGRPOConfig(**base, sampler={name: value})
    assert f"sampler.{name} {value!r}: {message}" in str(raised.value)


@pytest.mark.parametrize(("name", "value", "message"), BAD, ids=IDS)
def test_the_settings_object_refuses_it_naming_the_path(name: str, value: Any, message: str) -> None:
    """What every backend nests: the core's Settings names the setting by its path, with the core's message."""
    with pytest.raises(ValueError) as raised:
        Settings(sampler={name: value})
    assert str(raised.value) == f"sampler.{name} {value!r}: {message}"


def test_every_backend_builds_its_controller_from_the_core_settings() -> None:
    """The same Settings gives the same controller (weights, sampler config) in the bench, the torch loop and TRL."""
    from mtgrpo_backends.torch.config import TrainConfig

    settings = Settings("mt-grpo:0.3", SamplerSettings(max_rounds=3), {"lr": 0.05})
    want = settings.controller(3, 8, 4).sampler.config
    config = TrainConfig(method="mt-grpo:0.3", sampler=SamplerSettings(max_rounds=3), rule={"lr": 0.05})
    assert config.settings.controller(3, 8, 4).sampler.config == want
    pytest.importorskip("trl")
    from mtgrpo_backends.trl import MTGRPOConfig

    base = {"output_dir": "unused", "report_to": [], "use_cpu": True, "bf16": False}
    trl = MTGRPOConfig(
        **base, per_device_train_batch_size=8, num_generations=4, method="mt-grpo:0.3", sampler='{"max_rounds": 3}'
    )
    assert trl.settings.controller(3, 8, 4).sampler.config == want
    assert trl.rule_kwargs is None and trl.sampler == {"max_rounds": 3}  # JSON-native, as TrainingArguments keeps it
