"""Suite files: every malformed variant is refused with a message naming the field path and the bad value."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from mtgrpo_backends.simulated.suite_schema import SuiteSpec
from mtgrpo_backends.simulated.suites import SuiteError, builtin_suites, load_suite, suite_from_dict

TASKS_SUITE: dict[str, Any] = {
    "name": "mine",
    "observed_group_size": 8,
    "tasks": [
        {"name": "a", "start_accuracy": 0.2, "zero_gradient_rate": 0.3, "observed_at_accuracy": 0.5,
         "ceiling_accuracy": 0.9, "format_rate": 0.5, "learning_speed": 0.05},
        {"name": "b", "start_accuracy": 0.1, "zero_gradient_rate": 0.7, "observed_at_accuracy": 0.4,
         "ceiling_accuracy": 0.8, "format_rate": 0.5, "learning_speed": 0.1},
    ],
}  # fmt: skip
RECIPE: dict[str, Any] = {
    "num_tasks": 12, "seed": 1, "family_size": 4, "start_accuracy": [0.1, 0.4],
    "zero_gradient_excess": [0.0, 0.5], "ceiling_accuracy": [0.7, 0.95], "format_rate": [0.3, 0.9],
    "learning_speed": [0.5, 2.0], "transfer_within": 0.1, "transfer_across": -0.01,
}  # fmt: skip
RECIPE_SUITE: dict[str, Any] = {"name": "mine", "observed_group_size": 8, "recipe": RECIPE}
DROP = object()

# (suite, where to change it, new value or DROP, the field path and the value the message must name)
MALFORMED: list[tuple[str, tuple[str | int, ...], object, str, str | None]] = [
    # top level
    ("tasks", (), [1, 2], "suite", "[1, 2]"),
    ("tasks", ("nmae",), "x", "'mine'.nmae", "'x'"),
    ("tasks", ("name",), DROP, "suite.name", None),
    ("tasks", ("observed_group_size",), DROP, "'mine'.observed_group_size", None),
    ("tasks", ("name",), "", "suite.name", "''"),
    ("tasks", ("name",), 3, "suite.name", "3"),
    ("tasks", ("observed_group_size",), 1, "'mine'.observed_group_size", "1"),
    ("tasks", ("observed_group_size",), 8.0, "'mine'.observed_group_size", "8.0"),
    ("tasks", ("observed_group_size",), True, "'mine'.observed_group_size", "True"),
    ("tasks", ("observed_group_size",), "8", "'mine'.observed_group_size", "'8'"),
    ("tasks", ("description",), 5, "'mine'.description", "5"),
    ("tasks", ("heldout_size",), 0, "'mine'.heldout_size", "0"),
    ("tasks", ("heldout_size",), "200", "'mine'.heldout_size", "'200'"),
    ("tasks", ("tasks",), DROP, "tasks", "neither"),
    ("tasks", ("recipe",), RECIPE, "recipe", "both"),
    ("tasks", ("tasks",), {"a": 1}, "'mine'.tasks", "{'a': 1}"),
    ("tasks", ("tasks",), [], "'mine'.tasks", "[]"),
    ("tasks", ("tasks",), None, "'mine'.tasks", "null"),
    # a task
    ("tasks", ("tasks", 1), "b", "'mine'.tasks[1]", "'b'"),
    ("tasks", ("tasks", 0, "zero_gradinet_rate"), 0.3, "'mine'.tasks[0].zero_gradinet_rate", "0.3"),
    ("tasks", ("tasks", 1, "learning_speed"), DROP, "'mine'.tasks[1].learning_speed", None),
    ("tasks", ("tasks", 1, "name"), "", "'mine'.tasks[1].name", "''"),
    ("tasks", ("tasks", 1, "name"), ["b"], "'mine'.tasks[1].name", "['b']"),
    ("tasks", ("tasks", 1, "name"), "a", "'mine'.tasks", "['a']"),
    ("tasks", ("tasks", 0, "ceiling_accuracy"), 0, "'mine'.tasks[0].ceiling_accuracy", "0"),
    ("tasks", ("tasks", 0, "ceiling_accuracy"), 1.5, "'mine'.tasks[0].ceiling_accuracy", "1.5"),
    ("tasks", ("tasks", 1, "start_accuracy"), -0.1, "'mine'.tasks[1].start_accuracy", "-0.1"),
    ("tasks", ("tasks", 1, "start_accuracy"), 0.0, "'mine'.tasks[1].start_accuracy", "0.0"),
    ("tasks", ("tasks", 0, "start_accuracy"), 0.95, "'mine'.tasks[0].start_accuracy", "0.95"),
    ("tasks", ("tasks", 0, "start_accuracy"), "0.2", "'mine'.tasks[0].start_accuracy", "'0.2'"),
    ("tasks", ("tasks", 1, "zero_gradient_rate"), 1.2, "'mine'.tasks[1].zero_gradient_rate", "1.2"),
    ("tasks", ("tasks", 0, "zero_gradient_rate"), 0.05, "'mine'.tasks[0].zero_gradient_rate", "0.05"),
    ("tasks", ("tasks", 1, "zero_gradient_rate"), float("nan"), "'mine'.tasks[1].zero_gradient_rate", "nan"),
    ("tasks", ("tasks", 1, "observed_at_accuracy"), 0.85, "'mine'.tasks[1].observed_at_accuracy", "0.85"),
    ("tasks", ("tasks", 1, "observed_at_accuracy"), True, "'mine'.tasks[1].observed_at_accuracy", "True"),
    ("tasks", ("tasks", 0, "format_rate"), 0.0, "'mine'.tasks[0].format_rate", "0.0"),
    ("tasks", ("tasks", 0, "format_rate"), 1, "'mine'.tasks[0].format_rate", "1"),
    ("tasks", ("tasks", 1, "format_rate"), "high", "'mine'.tasks[1].format_rate", "'high'"),
    ("tasks", ("tasks", 1, "learning_speed"), -0.5, "'mine'.tasks[1].learning_speed", "-0.5"),
    ("tasks", ("tasks", 1, "learning_speed"), float("inf"), "'mine'.tasks[1].learning_speed", "inf"),
    ("tasks", ("tasks", 0, "grpo_accuracy"), 0.95, "'mine'.tasks[0].grpo_accuracy", "0.95"),
    ("tasks", ("tasks", 0, "grpo_accuracy"), None, "'mine'.tasks[0].grpo_accuracy", "null"),
    # the transfer matrix
    ("tasks", ("transfer",), [[1, 0.2]], "'mine'.transfer", "[[1.0, 0.2]]"),
    ("tasks", ("transfer",), [[1, 0.2], [0.1]], "'mine'.transfer", "[[1.0, 0.2], [0.1]]"),
    ("tasks", ("transfer",), "eye", "'mine'.transfer", "'eye'"),
    ("tasks", ("transfer",), [[1, 1.5], [0, 1]], "'mine'.transfer[0][1]", "1.5"),
    ("tasks", ("transfer",), [[1, "x"], [0, 1]], "'mine'.transfer[0][1]", "'x'"),
    ("tasks", ("transfer",), [[1, 0.2], [0.1, 0.5]], "'mine'.transfer", "[1][1] = 0.5"),
    ("tasks", ("transfer",), None, "'mine'.transfer", "null"),
    # run defaults
    ("tasks", ("defaults",), [720], "'mine'.defaults", "[720]"),
    ("tasks", ("defaults",), None, "'mine'.defaults", "None"),
    ("tasks", ("defaults",), {"stpes": 10}, "'mine'.defaults.stpes", "10"),
    ("tasks", ("defaults",), {"steps": 0}, "'mine'.defaults.steps", "0"),
    ("tasks", ("defaults",), {"max_rounds": -1}, "'mine'.defaults.max_rounds", "-1"),
    ("tasks", ("defaults",), {"seeds": 2.5}, "'mine'.defaults.seeds", "2.5"),
    # a recipe
    ("recipe", ("transfer",), [[1.0]], "'mine'.transfer", "remove 'transfer'"),
    ("recipe", ("recipe",), [1], "'mine'.recipe", "[1]"),
    ("recipe", ("recipe", "famliy_size"), 4, "'mine'.recipe.famliy_size", "4"),
    ("recipe", ("recipe", "seed"), DROP, "'mine'.recipe.seed", None),
    ("recipe", ("recipe", "num_tasks"), 0, "'mine'.recipe.num_tasks", "0"),
    ("recipe", ("recipe", "seed"), -1, "'mine'.recipe.seed", "-1"),
    ("recipe", ("recipe", "family_size"), 2.0, "'mine'.recipe.family_size", "2.0"),
    ("recipe", ("recipe", "start_accuracy"), 0.2, "'mine'.recipe.start_accuracy", "0.2"),
    ("recipe", ("recipe", "start_accuracy"), [0.1, 0.2, 0.3], "'mine'.recipe.start_accuracy", "[0.1, 0.2, 0.3]"),
    ("recipe", ("recipe", "zero_gradient_excess"), [0.0, 1.5], "'mine'.recipe.zero_gradient_excess[1]", "1.5"),
    ("recipe", ("recipe", "ceiling_accuracy"), [0.95, 0.7], "'mine'.recipe.ceiling_accuracy", "0.95"),
    ("recipe", ("recipe", "ceiling_accuracy"), ["0.7", 0.9], "'mine'.recipe.ceiling_accuracy[0]", "'0.7'"),
    ("recipe", ("recipe", "learning_speed"), [0.0, 2.0], "'mine'.recipe.learning_speed[0]", "0.0"),
    ("recipe", ("recipe", "transfer_within"), 1.5, "'mine'.recipe.transfer_within", "1.5"),
    ("recipe", ("recipe", "transfer_across"), False, "'mine'.recipe.transfer_across", "False"),
    ("recipe", ("recipe", "start_accuracy"), [0.1, 0.8], "'mine'.recipe.start_accuracy", "0.8"),
    ("recipe", ("recipe", "format_rate"), [0.0, 0.9], "'mine'.recipe.format_rate[0]", "0.0"),
    ("recipe", ("recipe", "format_rate"), [0.3, 1.0], "'mine'.recipe.format_rate[1]", "1.0"),
    ("recipe", ("recipe", "start_accuracy"), [0.0, 0.4], "'mine'.recipe.start_accuracy[0]", "0.0"),
]


def _variant(suite: str, at: tuple[str | int, ...], value: object) -> Any:
    if not at:
        return value
    data = copy.deepcopy(TASKS_SUITE if suite == "tasks" else RECIPE_SUITE)
    target: Any = data
    for part in at[:-1]:
        target = target[part]
    if value is DROP:
        del target[at[-1]]
    else:
        target[at[-1]] = copy.deepcopy(value)
    return data


@pytest.mark.parametrize(("suite", "at", "value", "path", "shown"), MALFORMED)
def test_malformed_suite_is_refused_naming_the_field_and_the_value(
    suite: str, at: tuple[str | int, ...], value: object, path: str, shown: str | None
) -> None:
    with pytest.raises(SuiteError) as info:
        suite_from_dict(_variant(suite, at, value))
    message = str(info.value)
    assert path in message
    assert shown is None or shown in message
    assert isinstance(info.value, ValueError)


def test_every_problem_is_reported_one_per_line() -> None:
    data = _variant("tasks", ("tasks", 0, "format_rate"), "x")
    data["tasks"][1]["learning_speed"] = -1
    data["heldout_size"] = 0
    with pytest.raises(SuiteError) as info:
        suite_from_dict(data)
    lines = str(info.value).splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "suite 'mine'.heldout_size",
        "suite 'mine'.tasks[0].format_rate",
        "suite 'mine'.tasks[1].learning_speed",
    ]


def test_file_source_names_the_file_when_the_name_is_bad(tmp_path: Any) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({**TASKS_SUITE, "name": ""}))
    with pytest.raises(SuiteError, match=f"^{path}.name: string should have at least 1 character, got ''$"):
        load_suite(str(path))


def test_valid_suites_load_with_their_defaults() -> None:
    suite = suite_from_dict(TASKS_SUITE)
    assert suite.task_names == ["a", "b"] and suite.heldout_size == 200 and suite.description == ""
    assert suite.defaults.steps == 720 and suite.defaults.max_rounds == 10 and suite.grpo_accuracy == (None, None)
    assert (suite.transfer == [[1.0, 0.0], [0.0, 1.0]]).all()
    equal_ends = copy.deepcopy(RECIPE_SUITE)
    equal_ends["recipe"]["format_rate"] = [0.5, 0.5]  # low == high is a valid range
    assert {t.format_rate for t in suite_from_dict(equal_ends).tasks} == {0.5}
    for name in builtin_suites():
        assert load_suite(name).num_tasks >= 3


def test_schema_exports_as_json_schema() -> None:
    schema = SuiteSpec.model_json_schema()
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"name", "observed_group_size"}
