"""The GC tuning that servers and load processes apply."""

from __future__ import annotations

import gc

from streamlog.gctune import tune_for_throughput


def test_tuning_raises_the_young_threshold_and_zero_leaves_it():
    before = gc.get_threshold()
    try:
        assert tune_for_throughput(0) == before
        assert gc.get_threshold() == before
        assert tune_for_throughput(12_345) == before
        assert gc.get_threshold() == (12_345, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
