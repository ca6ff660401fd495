"""Property tests: every history of a correct model log checks valid (also after a trip
through the file format, and in any completion order), and one injected anomaly of each kind
is found, alone."""

from __future__ import annotations

import random

from chaos_model import INJECTIONS, generate
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from streamlog.chaos.checker import RETRY_DUPLICATE, SAFETY, UNSEEN, check
from streamlog.chaos.history import dumps, loads
from streamlog.chaos.report import summary

models = st.fixed_dictionaries({
    "ops": st.integers(10, 250),
    "partitions": st.integers(1, 3),
    "producers": st.integers(1, 4),
    "consumers": st.integers(1, 3),
    "p_fail": st.sampled_from([0.0, 0.05, 0.3]),
    "p_info": st.sampled_from([0.0, 0.1, 0.4]),
    "p_twice": st.sampled_from([0.0, 0.2]),
    "retention": st.booleans(),
    "max_poll": st.integers(1, 10),
})


def safety_found(result):
    return {k for k in SAFETY if result.count(k)}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), params=models)
def test_histories_of_a_correct_log_are_valid(seed, params):
    rng = random.Random(seed)
    h = generate(rng, **params)
    r = check(h)
    assert r.valid, summary(r, h)
    if not params["retention"]:
        assert r.count(UNSEEN) == 0, summary(r, h)   # the drain read everything
    if params["p_twice"] == 0:
        assert r.count(RETRY_DUPLICATE) == 0
    # the file format loses nothing, and the order records were written in does not matter
    again = loads(dumps(h))
    rng.shuffle(again.sends)
    rng.shuffle(again.polls)
    r2 = check(again)
    assert (r2.valid, r2.counts, r2.stats) == (r.valid, r.counts, r.stats)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(seed=st.integers(0, 2**32), params=models, kind=st.sampled_from(sorted(INJECTIONS)))
def test_one_injected_anomaly_is_found(seed, params, kind):
    rng = random.Random(seed)
    h = generate(rng, **params)
    before = check(h)
    bad = INJECTIONS[kind](h, rng)
    assume(bad is not None)
    r = check(bad)
    assert r.count(kind) > before.count(kind), summary(r, bad)
    if kind in SAFETY:
        assert not r.valid
        assert safety_found(r) == {kind}, summary(r, bad)
    else:
        assert r.valid, summary(r, bad)
