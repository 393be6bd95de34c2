"""The command-line vocabulary shared by `mtgrpo bench`, `mtgrpo train`, `mtgrpo demo` and examples/trl_mtgrpo.py.

Each command is one dataclass; tyro generates its parser (flags, types, choices, and help from the docstring
under each field, CleanRL style) and refuses a value of the wrong type or outside its choices, naming the flag.
The checks that need context (a sampler setting against SamplerConfig, a rule option against the rules of the
chosen methods) are here too, and name the flag, the value and what was expected. docs/options.md: every flag.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import tyro

from mtgrpo_core.methods import build_rule, parse_method, rule_class
from mtgrpo_core.prompts.history import SelectionConfig
from mtgrpo_core.settings import SamplerSettings, SelectionSettings

T = TypeVar("T")


def _comma_list(convert: Callable[[str], Any], metavar: str) -> tyro.constructors.PrimitiveConstructorSpec[Any]:
    """A list flag that takes comma- or space-separated values: `--seeds 0,1,2` or `--seeds 0 1 2`; a flag given
    with no value in it (`--methods ,`) is refused rather than read as unset."""

    def from_tokens(tokens: list[str]) -> tuple[Any, ...]:
        values = tuple(convert(x.strip()) for t in tokens for x in t.split(",") if x.strip())
        if not values:
            raise ValueError(f"expected at least one value ({metavar}), got {' '.join(tokens)!r}")
        return values

    return tyro.constructors.PrimitiveConstructorSpec(
        nargs="*",
        metavar=metavar,
        instance_from_str=from_tokens,
        is_instance=lambda value: isinstance(value, tuple),
        str_from_instance=lambda value: [",".join(str(x) for x in value)],
    )


Ints = Annotated[tuple[int, ...], _comma_list(int, "INT[,INT...]")]
Floats = Annotated[tuple[float, ...], _comma_list(float, "FLOAT[,FLOAT...]")]
Names = Annotated[tuple[str, ...], _comma_list(str, "NAME[,NAME...]")]
# a nested group whose flags carry no prefix (--workers, not --harness.workers)
Flat = tyro.conf.arg(name="")


def unset(meaning: str) -> Any:
    """Help hint of an option whose default None (or empty) means `meaning`."""
    return tyro.conf.arg(help_behavior_hint=f"(default: {meaning})")


def parse(cls: type[T], argv: Sequence[str], prog: str, description: str) -> T:
    """Parse argv into cls with tyro (SystemExit 2 with tyro's message on a bad flag, 0 after --help)."""
    config = (tyro.conf.DisallowNone, tyro.conf.FlagCreatePairsOff)
    return tyro.cli(cls, args=list(argv), prog=prog, description=description, config=config)


def run_command(prog: str, body: Callable[[], int]) -> int:
    """Run a command body; a ValueError or TypeError (bad input, refused before any work starts) becomes one line
    `prog: error: message` and exit code 2; an OSError (a file that could not be written during the run) one
    such line and exit code 1; Ctrl-C outside a comparison (which reports its finished runs itself) exit 130."""
    try:
        return body()
    except SystemExit as stop:  # tyro after --help (0) or a flag it refused (2)
        return stop.code if isinstance(stop.code, int) else 2
    except (ValueError, TypeError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def flag(name: str, prefix: str = "") -> str:
    """The command-line flag of a field: flag('max_rounds', 'sampler.') == '--sampler.max-rounds'."""
    return "--" + prefix + name.replace("_", "-")


def at_least(name: str, value: int, minimum: int) -> int:
    """Refuse an integer flag below `minimum`, naming the flag."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{flag(name)} must be an integer >= {minimum}, got {value!r}")
    return value


def writable_dir(name: str, path: Path) -> None:
    """Refuse an output directory that cannot be written (checked by writing a file there, so that it also holds
    for root and read-only file systems); directories created for the check are removed again."""
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} {str(path)!r}: expected a directory to write in, but that is an existing file")
    created: list[Path] = []
    try:
        missing, ancestor = [], path
        while not ancestor.exists() and ancestor != ancestor.parent:
            missing.append(ancestor)
            ancestor = ancestor.parent
        for directory in reversed(missing):
            directory.mkdir()
            created.append(directory)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".mtgrpo-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or str(err)
        raise ValueError(
            f"{name} {str(path)!r}: expected a writable directory, cannot write there ({reason})"
        ) from None
    finally:
        for directory in reversed(created):
            with contextlib.suppress(OSError):
                directory.rmdir()


def writable_file(name: str, path: Path) -> None:
    """Refuse an output file that cannot be written: a directory, or in a directory that cannot be written."""
    if path.is_dir():
        raise ValueError(f"{name} {str(path)!r}: expected a file to write, but that is a directory")
    writable_dir(name, path.parent)


def checked_sampler(settings: SamplerSettings) -> dict[str, Any]:
    """The --sampler.* settings given, each checked by the core (refusals name the flag)."""
    settings.check(label=lambda name: flag(name, "sampler."))
    return settings.given()


@dataclass(frozen=True)
class SelectionOptions(SelectionSettings):
    """Selective rollouts on a finite prompt pool (mtgrpo_core.settings.SelectionSettings, docs/selective.md)."""

    skip: Literal["none", "history", "oracle"] = "none"
    """prompts a request passes over: none; history (last seen uninformative, with exploration); oracle (simulator
    only: prompts more likely uninformative than not under the current policy)"""

    def config(self) -> SelectionConfig:  # type: ignore[override]
        """The SelectionConfig of the settings given (filtering is set per method by the backend); refusals name
        the flag. A setting given with --selection.skip none is refused: nothing would use it."""
        self.check(label=lambda name: flag(name, "selection."))
        settings = self.given()
        if self.skip == "none" and settings:
            listed = ", ".join(f"{flag(k, 'selection.')} {x!r}" for k, x in settings.items())
            raise ValueError(
                f"{listed}: used only when prompts are skipped, but --selection.skip is none; expected "
                "--selection.skip history with it (on a finite prompt pool), or leave it out"
            )
        return SelectionConfig(**settings)

    def trainer_settings(self) -> SelectionSettings | None:
        """The settings a trainer's pool takes (TrainConfig.selection, MTGRPOConfig.selection): None for skip none;
        the filter is the method's. The oracle is refused: it needs each prompt's true success probability, which
        only the simulator has."""
        if self.skip == "oracle":
            raise ValueError(
                "--selection.skip oracle: the oracle knows each prompt's true success probability, which only the "
                "simulator has (mtgrpo bench); expected none or history"
            )
        self.config()  # refuses a setting given with skip none
        if self.skip == "none":
            return None
        return SelectionSettings(self.exploration, self.min_retry, self.max_skips)


def rule_parameters(method: str) -> set[str] | None:
    """Constructor arguments of the method's weighting rule (None: it takes any keyword)."""
    params = inspect.signature(rule_class(parse_method(method).rule)).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.name != "num_tasks"}


@dataclass(frozen=True)
class RuleOptions:
    """Weighting-rule settings; each goes to every chosen method whose rule takes it (lambda and eta are in the
    method string: mt-grpo:0.2, minimax-reg:0.01)."""

    lr: Annotated[float | None, unset("the rule's: IWU 0.025")] = None
    """IWU / minimax step size on the task logits"""
    weight_decay: Annotated[float | None, unset("the rule's: 1e-5")] = None
    """IWU decoupled weight decay of the logits"""
    improvement_clip: Annotated[float | None, unset("the rule's: 0.2")] = None
    """IWU clip c of the improvement signal I_k"""
    optimizer: Annotated[Literal["adamw", "sgd"] | None, unset("the rule's: adamw")] = None
    """IWU optimizer of the logits"""
    alpha: Annotated[float | None, unset("the rule's: 0.5")] = None
    """SEC bandit: EMA rate of Q_k"""
    temperature: Annotated[float | None, unset("the rule's: 0.2")] = None
    """SEC bandit: softmax temperature of p = softmax(Q / T)"""
    lam_start: Annotated[float | None, unset("no ramp: lam throughout")] = None
    """scaled rule (mt-grpo-scaled): lam at the first weight update, moving linearly to the method's lam over
    --rule.lam-ramp updates"""
    lam_ramp: Annotated[int | None, unset("the rule's: 0, no ramp")] = None
    """scaled rule: weight updates over which lam moves from --rule.lam-start to the method's lam"""
    cost_tilt: Annotated[float | None, unset("the rule's: 0, no tilt")] = None
    """scaled rule: kappa in [0, 1], weights tilted by acceptance^kappa so that kappa 1 splits the generated groups
    (docs/weighting.md)"""
    within: Annotated[float | None, unset("the rule's: 1.0")] = None
    """family rule (mt-grpo-family): how far a family's weight follows its own IWU over its tasks (1) rather than
    spreading evenly (0)"""

    def given(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    def kwargs_for(self, method: str) -> dict[str, Any]:
        """The options given that the method's rule takes (rule_kwargs of Controller.from_method)."""
        accepted = rule_parameters(method)
        return {k: x for k, x in self.given().items() if accepted is None or k in accepted}

    def check(self, methods: Sequence[str], num_tasks: int, supplied: Mapping[str, Any] | None = None) -> None:
        """Refuse an option that no chosen method's rule takes, or a value a rule refuses; messages name the flag.
        supplied: what the backend passes to every rule that takes it (the simulator: the suite's families)."""
        for name, value in self.given().items():
            if not any(name in self.kwargs_for(m) for m in methods):
                raise ValueError(
                    f"{flag(name, 'rule.')} {value!r}: no chosen method's rule takes {name!r} (methods {list(methods)})"
                )
        for method in methods:  # the options a rule takes go in together (lam_start needs lam_ramp)
            if not (given := self.kwargs_for(method)):
                continue
            try:
                spec = parse_method(method)
                extra = {k: x for k, x in (supplied or {}).items() if k in (rule_parameters(method) or ())}
                build_rule(spec.rule, num_tasks, **{**spec.rule_kwargs, **extra, **given})
            except (TypeError, ValueError) as err:
                flags = ", ".join(f"{flag(k, 'rule.')} {x!r}" for k, x in given.items())
                raise ValueError(f"{flags} (method {method!r}): {err}") from None


@dataclass(frozen=True)
class HarnessOptions:
    """Which runs a comparison makes and what it writes (`mtgrpo bench`, `mtgrpo demo`)."""

    methods: Annotated[Names, unset("the command's")] = ()
    """methods to compare, e.g. grpo,dapo,mt-grpo:0.2"""
    seeds: Annotated[Ints, unset("the command's")] = ()
    """seeds of the runs, e.g. 0,1,2"""
    reference: Annotated[str | None, unset("dapo when it is run, else none")] = None
    """method Delta_m% is measured against, paired by seed (must be one of the methods run)"""
    sweep: Annotated[str | None, unset("no sweep")] = None
    """lambda=0.1,0.3,...: add mt-grpo at each lambda and plot worst vs average accuracy"""
    thresholds: Floats = (0.3, 0.4, 0.5)
    """worst-task accuracy levels for the steps-to-threshold columns"""
    workers: int = 1
    """worker processes running the runs in parallel (1 thread each)"""
    out: Annotated[Path | None, unset("write nothing")] = None
    """write results.json and figure.png (and sweep.png with --sweep) in this directory"""
    quiet: bool = False
    """no progress bar"""

    def check(self) -> None:
        """The options that need no other context; --out must be a writable directory."""
        at_least("workers", self.workers, 1)
        if len(set(self.seeds)) != len(self.seeds) or any(s < 0 for s in self.seeds):
            raise ValueError(f"--seeds must be distinct integers >= 0, got {list(self.seeds)}")
        if not all(0.0 < t <= 1.0 for t in self.thresholds):
            raise ValueError(f"--thresholds must lie in (0, 1], got {list(self.thresholds)}")
        if self.out is not None:
            writable_dir("--out", self.out)

    def reference_for(self, methods: Sequence[str]) -> str | None:
        """The reference method of Delta_m%: --reference, which must be one of `methods` (refused otherwise);
        unset: dapo when it is run, else none (the table then has no Delta_m%)."""
        if self.reference is None:
            return DEFAULT_REFERENCE if DEFAULT_REFERENCE in methods else None
        if self.reference not in methods:
            raise ValueError(
                f"--reference {self.reference!r}: expected one of the methods run {list(methods)}, "
                f"so that Delta_m% has runs to pair with (add it to --methods)"
            )
        return self.reference


DEFAULT_REFERENCE = "dapo"


SWEEP_KNOBS = ("lambda",)


def sweep_methods(text: str) -> list[str]:
    """`--sweep lambda=0.1,0.3` -> ["mt-grpo:0.1", "mt-grpo:0.3"]."""
    knob, sep, values = text.partition("=")
    if not sep or knob.strip() not in SWEEP_KNOBS:
        raise ValueError(f"--sweep must look like lambda=0.05,0.1 (knobs: {list(SWEEP_KNOBS)}), got {text!r}")
    try:
        lams = [float(x) for x in values.split(",") if x.strip()]
    except ValueError as err:
        raise ValueError(f"--sweep values must be numbers, got {values!r}") from err
    if not lams:
        raise ValueError(f"--sweep needs at least one value, got {text!r}")
    return [f"mt-grpo:{x:g}" for x in lams]


def chosen_methods(options: HarnessOptions, default: Sequence[str]) -> tuple[list[str], list[str]]:
    """(methods to run, the swept ones): --sweep's mt-grpo lambdas, then --methods (default grpo,dapo with a sweep,
    else `default`), without repeats."""
    swept = sweep_methods(options.sweep) if options.sweep else []
    listed = list(options.methods) or (["grpo", "dapo"] if swept else list(default))
    methods = list(dict.fromkeys(swept + listed))
    for m in methods:
        parse_method(m)
    return methods, swept


def check_methods(
    methods: Sequence[str],
    num_tasks: int,
    batch_size: int,
    group_size: int,
    sampler: dict[str, Any],
    rule: RuleOptions,
) -> None:
    """Build each method's controller once, so that what cannot be built (a user's rule that does not import, a
    sampler setting a method cannot take) is refused before any run starts."""
    from mtgrpo_core.controller import Controller

    for m in methods:
        try:
            Controller.from_method(m, num_tasks, batch_size, group_size, rule_kwargs=rule.kwargs_for(m), **sampler)
        except (TypeError, ValueError) as err:
            raise method_refusal(m, sampler, err) from None


def method_refusal(method: str, sampler: dict[str, Any], err: Exception) -> ValueError:
    """A method whose controller cannot be built with the --sampler.* settings given, naming the method, the
    settings and why (e.g. --sampler.carry-over 1 with grpo, whose planner cannot carry over)."""
    given = ", ".join(f"{flag(k, 'sampler.')} {x!r}" for k, x in sampler.items())
    return ValueError(
        f"method {method!r}{' with ' + given if given else ''}: {err}; leave the method out or change the setting"
    )
