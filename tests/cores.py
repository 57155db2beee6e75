"""One core or two for the engine tests that run both ways (test_cells.py, test_stream.py)."""

import fastrnn.engine.driver
import fastrnn.stream
import fastrnn.engine.threads


def use_cores(monkeypatch, cores):
    """Run what follows on "one_core" (fastrnn.engine.threads off) or "two_cores": then every sequence and
    stream the two-core paths can take, however small, takes them, on a busy machine or not (no
    pause after late waits, no timing of one core against two, a longer wait before a stream's
    server leaves)."""
    if cores == "one_core":
        monkeypatch.setattr(fastrnn.engine.threads, "_num_threads", 1)
        return
    monkeypatch.setattr(fastrnn.engine.threads, "_num_threads", 2)
    monkeypatch.setattr(fastrnn.engine.threads, "CONTENDED_SECONDS", 0.0)
    monkeypatch.setattr(fastrnn.engine.threads, "_contended_until", 0.0)
    monkeypatch.setattr(fastrnn.engine.driver, "PAIR_MIN_WEIGHT_BYTES", 0)
    monkeypatch.setattr(fastrnn.engine.driver, "STREAM_PAIR_MIN_WEIGHT_BYTES", 0)
    monkeypatch.setattr(fastrnn.engine.driver, "PAIR_MIN_STEPS", 1)
    monkeypatch.setattr(fastrnn.stream, "LATE_STEPS_LIMIT", 1 << 62)
    monkeypatch.setattr(fastrnn.stream._PairSteps, "TRIAL_STEPS", 0)
    # A stall of a loaded test machine between two steps must not close a stream's server.
    monkeypatch.setattr(fastrnn.stream._PairSteps, "IDLE_SECONDS", 0.05)
