"""A demo service tells how long its full garbage collections stopped it (testproject/gc_pauses.py),
at ``/demo/stats``."""

import gc
import time

from testproject import gc_pauses


def test_a_full_collection_is_recorded_with_when_it_started_and_how_long_it_took() -> None:
    gc_pauses.install()
    gc_pauses.install()  # a second handler loading the middleware: still one callback
    assert gc.callbacks.count(gc_pauses._callback) == 1
    before = time.time()
    known = len(gc_pauses.latest())

    gc.collect()  # a full collection: generation 2
    gc.collect(0)  # a young one: not a full collection, not recorded

    after = time.time()
    recorded = gc_pauses.latest()
    assert len(recorded) == min(known + 1, gc_pauses._KEPT)
    started, took = recorded[-1]
    assert before <= started <= after
    assert 0 < took <= after - before
