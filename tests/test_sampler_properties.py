"""Property tests of RP-SAMPLER's guarantees (hypothesis)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtgrpo_core.sampling.config import SamplerConfig
from mtgrpo_core.sampling.sampler import RatioPreservingSampler
from tests.sampler_sim import AcceptanceCaller

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def cases(draw):  # type: ignore[no-untyped-def]
    k = draw(st.sampled_from([1, 2, 3, 9, 50, 1000]))
    raw = np.array(
        draw(st.lists(st.floats(0.0, 1.0), min_size=k, max_size=k))
        if k <= 50
        else np.random.default_rng(draw(st.integers(0, 100))).random(k)
    )
    raw[0] += 1e-3
    weights = raw / raw.sum()
    seed = draw(st.integers(0, 2**16))
    rates = np.random.default_rng(seed).choice([0.0, 0.15, 0.3, 0.7, 0.95, 1.0], size=k)
    config = SamplerConfig(
        batch_size=draw(st.integers(1, 300)),
        group_size=draw(st.integers(2, 16)),
        max_rounds=draw(st.integers(0, 10)),
        targets=draw(st.sampled_from(["multinomial", "apportion"])),
        planner=draw(st.sampled_from(["paper", "posterior"])),
        ratio_constraint=draw(st.booleans()),
        acceptance_aware=draw(st.booleans()),
        filtering=draw(st.sampled_from(["lenient", "none"])),
    )
    return weights, rates, config, seed


@SETTINGS
@given(cases())
def test_batch_is_accepted_unique_and_sized(case) -> None:  # type: ignore[no-untyped-def]
    weights, rates, config, seed = case
    sampler = RatioPreservingSampler(len(weights), config, seed=seed)
    caller = AcceptanceCaller(rates, seed)
    builder = sampler.begin(weights, step=0)
    batch = caller.run(builder)
    report = batch.report
    assert len(set(batch.keys)) == len(batch.keys)  # no duplicates
    if config.filtering != "none":
        assert all(caller.informative[k] for k in batch.keys)  # never a rejected group
    assert len(batch) == min(config.batch_size, int(report.accepted.sum()))
    assert report.rounds <= 1 + config.max_rounds  # terminates within the round budget
    assert np.array_equal(np.bincount(batch.tasks, minlength=len(weights)), report.realized_counts)
    assert (report.surplus >= 0).all()
    assert report.generated.sum() == caller.next_key  # everything generated was accounted for
    if config.ratio_constraint and (report.accepted >= report.target_counts).all():
        assert np.array_equal(report.realized_counts, report.target_counts)
        assert not report.budget_exhausted


@SETTINGS
@given(cases())
def test_same_seed_same_reports_same_decisions_and_restore(case) -> None:  # type: ignore[no-untyped-def]
    weights, rates, config, seed = case
    k = len(weights)
    a = RatioPreservingSampler(k, config, seed=seed)
    b = RatioPreservingSampler(k, config, seed=seed)
    for step in range(2):
        ba = AcceptanceCaller(rates, seed + step).run(a.begin(weights, step))
        bb = AcceptanceCaller(rates, seed + step).run(b.begin(weights, step))
        assert ba.keys.tolist() == bb.keys.tolist()
    restored = RatioPreservingSampler(k, config, seed=0)
    restored.load_state_dict(json.loads(json.dumps(a.state_dict())))  # JSON-native state
    ca = AcceptanceCaller(rates, 7).run(a.begin(weights, 2))
    cr = AcceptanceCaller(rates, 7).run(restored.begin(weights, 2))
    assert ca.keys.tolist() == cr.keys.tolist()
    assert np.array_equal(a.estimator.filter_rate, restored.estimator.filter_rate)


INT_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]


@st.composite
def key_reports(draw):  # type: ignore[no-untyped-def]
    """Up to 3 reports of unique keys, each a numpy array of some integer dtype or a list of Python ints."""
    reports = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from([*INT_DTYPES, "list"]))
        info = np.iinfo(np.uint64 if kind == "list" else kind)
        low = -(2**63) if kind == "list" and draw(st.booleans()) else int(info.min)
        values = draw(st.lists(st.integers(low, int(info.max)), min_size=1, max_size=6, unique=True))
        reports.append(values if kind == "list" else np.array(values, dtype=kind))
    return reports


@SETTINGS
@given(key_reports())
def test_keys_round_trip_exactly_or_are_refused_by_the_dtype_rule(reports) -> None:  # type: ignore[no-untyped-def]
    values = [int(x) for r in reports for x in r]
    total = len(values)
    b = RatioPreservingSampler(1, SamplerConfig(batch_size=total, group_size=2, filtering="none")).begin([1.0], 0)
    assert b.next_request() is not None
    seen: set[int] = set()
    kept: list[int] = []
    for keys in reports:
        fresh = [int(x) for x in keys]
        so_far = kept + fresh
        clash = bool(seen & set(fresh))
        unholdable = min(so_far) < 0 and max(so_far) >= 2**63
        n = len(fresh)
        if clash or unholdable:
            with pytest.raises(ValueError, match="reported twice" if clash and not unholdable else "keys"):
                b.report_arrays(np.zeros(n, dtype=int), keys, informative=np.ones(n, dtype=bool))
            b.report_arrays(np.zeros(0, dtype=int), [], informative=np.zeros(0, dtype=bool))
            return
        b.report_arrays(np.zeros(n, dtype=int), keys, informative=np.ones(n, dtype=bool))
        seen.update(fresh)
        kept = so_far
    batch = b.finish()
    assert batch.keys.tolist() == values  # exactly as reported, in report order
    assert np.issubdtype(batch.keys.dtype, np.integer)
    arrays = [r for r in reports if isinstance(r, np.ndarray)]
    if len(arrays) == len(reports) and np.issubdtype(np.result_type(*arrays), np.integer):
        assert batch.keys.dtype == np.result_type(*arrays)  # numpy's promotion where it stays integer
