"""A test's risky call, run in a child process under a memory limit and a time limit.

A case that allocates without bound, blocks for ever or crashes the interpreter would take the
test run down with it; here it ends in an Outcome the test asserts on. The child (fuzz_child.py)
imports fastrnn and its peers once, sets RLIMIT_AS to its size at that point plus the memory limit,
and then serves calls until the parent exits. One child serves the whole test run; after a
timeout, a crash or a MemoryError it is replaced by a fresh one.

    outcome = limited.worker().call("load", str(path), timeout=20)
    assert outcome.kind == "error" and outcome.type == "ValueError", outcome
"""

import atexit
import os
import pickle
import select
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

MEMORY_LIMIT = 1 << 30      # bytes a call may allocate beyond the child's size after its imports
START_TIMEOUT = 120.0       # importing fastrnn, onnxruntime and torch on a loaded machine
_FRAME = struct.Struct("<Q")
_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Outcome:
    """How one call ended.

    kind: "ok" (value holds what the case returned), "error" (type and message: the exception the
    case raised), "wrong" (the case found a wrong answer; message says how), "memory" (MemoryError
    under the limit), "timeout", or "crash" (the child died; message holds its exit status).
    note: what the child was doing last, e.g. "onnxruntime" while it ran the peer.
    """

    kind: str
    value: object = None
    type: str = ""
    message: str = ""
    traceback: str = ""
    note: str = ""
    seconds: float = 0.0

    def __str__(self):
        text = f"{self.kind}"
        if self.type:
            text += f" {self.type}"
        if self.message:
            text += f": {self.message}"
        if self.note:
            text += f" (during {self.note})"
        if self.traceback:
            text += "\n" + self.traceback
        return text


class Worker:
    """The child process and its two pipes."""

    def __init__(self, memory_limit=MEMORY_LIMIT):
        self.memory_limit = memory_limit
        self._process = None
        self.restarts = 0

    def call(self, case, *args, timeout=30.0):
        """Run fuzz_child's case `case` on `args` (picklable) in the child; an Outcome."""
        if self._process is None or self._process.poll() is not None:
            self._start()
        started = time.monotonic()
        self._send((case, args))
        note = ""
        while True:
            try:
                frame = self._receive(started + timeout)
            except TimeoutError:
                self.close()
                return Outcome("timeout", message=f"no answer within {timeout:g} s", note=note,
                               seconds=time.monotonic() - started)
            except EOFError:
                status = self._process.wait()
                self._process = None
                return Outcome("crash", message=f"the child exited with status {status}",
                               note=note, seconds=time.monotonic() - started)
            if isinstance(frame, tuple) and frame and frame[0] == "note":
                note = frame[1]
                continue
            if frame.kind == "memory":
                self.close()  # a fresh child: the old one may be left fragmented
            return frame

    def close(self):
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        if process is not None:
            process.stdin.close()
            process.stdout.close()

    def _start(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_ROOT), env.get("PYTHONPATH")]))
        self._process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("fuzz_child.py")),
             str(self.memory_limit)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=str(_ROOT))
        self.restarts += 1
        try:
            ready = self._receive(time.monotonic() + START_TIMEOUT)
        except (TimeoutError, EOFError):
            self.close()
            raise RuntimeError("the test child process did not start (see its stderr)")
        assert ready == "ready", ready

    def _send(self, message):
        data = pickle.dumps(message)
        self._process.stdin.write(_FRAME.pack(len(data)) + data)
        self._process.stdin.flush()

    def _receive(self, deadline):
        size = _FRAME.unpack(self._read(_FRAME.size, deadline))[0]
        return pickle.loads(self._read(size, deadline))

    def _read(self, count, deadline):
        stream = self._process.stdout
        chunks, missing = [], count
        while missing:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([stream], [], [], left)[0]:
                raise TimeoutError
            chunk = os.read(stream.fileno(), missing)
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            missing -= len(chunk)
        return b"".join(chunks)


_worker = None


def worker():
    """The test run's one Worker, started on first use and stopped when the run ends."""
    global _worker
    if _worker is None:
        _worker = Worker()
        atexit.register(_worker.close)
    return _worker
