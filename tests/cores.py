"""One thread or all of them, for the engine tests that run both ways (test_cells.py, test_stream.py)."""

import fastrnn.engine.driver
import fastrnn.engine.parallel
import fastrnn.engine.plan


def use_cores(monkeypatch, cores):
    """Run what follows on "one_core" (every call on the calling thread) or "all_cores": then
    every call of two rows or more is cut into blocks run at once (fastrnn.engine.parallel),
    and a bidirectional sequence of one row runs its directions at once, however small, so that
    the parallel kernels see every case the serial ones do."""
    if cores == "one_core":
        monkeypatch.setattr(fastrnn.engine.parallel, "_num_threads", 1)
        return
    monkeypatch.setattr(fastrnn.engine.parallel, "_num_threads", max(
        2, fastrnn.engine.parallel.get_num_threads()))
    monkeypatch.setattr(fastrnn.engine.plan, "MIN_ROWS_PER_THREAD", 1)
    monkeypatch.setattr(fastrnn.engine.driver, "PARALLEL_DIRECTIONS", 0)
