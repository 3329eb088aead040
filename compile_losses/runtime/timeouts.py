"""Time bounds for graph runs: one watchdog thread sets ``RunOptions.terminate`` on runs that pass
their deadline; onnxruntime checks the flag between kernels (Loop bodies included) and fails the
run, which the caller turns into :class:`~compile_losses.runtime.errors.BundleTimeoutError`.

One shared thread with a heap of deadlines, not a ``threading.Timer`` per call: a forward pass of
the reference net takes ~8 us and starting a thread costs ~100 us.
"""
import heapq
import itertools
import math
import threading
import time
from typing import Any, List, Optional, Tuple

DEFAULT_RUN_TIMEOUT_S = 300.0     # forward / loss / train_step: generous, but never forever
DEFAULT_CHECK_TIMEOUT_S = 60.0    # the fixtures are a few small batches; seconds would be a lot


def check_timeout(name: str, value: Any) -> Optional[float]:
    """``None`` (no bound) or a positive, finite number of seconds."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            import numpy as np

            if isinstance(value, np.generic) and np.issubdtype(type(value), np.number) and not np.iscomplexobj(value):
                value = float(value)
            else:
                raise TypeError
        except TypeError:
            raise TypeError("{} must be a number of seconds or None, got {}".format(name, type(value).__name__)) from None
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError("{} must be a finite number of seconds > 0 (or None for no bound), got {!r}".format(name, value))
    return value


class _Watch:
    __slots__ = ("options", "fired", "done")

    def __init__(self, options: Any) -> None:
        self.options, self.fired, self.done = options, False, False


class Watchdog:
    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._heap: List[Tuple[float, int, _Watch]] = []
        self._seq = itertools.count()
        self._thread: Optional[threading.Thread] = None
        self._wakes_at = math.inf   # when the thread wakes next; a later deadline needs no notify

    def arm(self, options: Any, seconds: float) -> _Watch:
        watch = _Watch(options)
        with self._cv:
            self._drop_done()
            deadline = time.monotonic() + seconds
            heapq.heappush(self._heap, (deadline, next(self._seq), watch))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="compile_losses-watchdog", daemon=True)
                self._thread.start()
            if deadline < self._wakes_at:  # waking the thread on every call would cost ~50 us
                self._wakes_at = deadline
                self._cv.notify()
        return watch

    def disarm(self, watch: _Watch) -> bool:
        """Stop watching; True if the deadline passed and the run was told to stop."""
        with self._cv:
            watch.done = True
            self._drop_done()
            return watch.fired

    def _drop_done(self) -> None:
        # finished runs leave the heap as soon as they reach its top, so a loop of calls with one
        # timeout keeps the heap at the number of runs in flight
        while self._heap and self._heap[0][2].done:
            heapq.heappop(self._heap)

    def _loop(self) -> None:
        with self._cv:
            while True:
                self._drop_done()
                if not self._heap:
                    self._wakes_at = math.inf
                    self._cv.wait()
                    continue
                deadline, _, watch = self._heap[0]
                now = time.monotonic()
                if now < deadline:
                    self._wakes_at = deadline
                    self._cv.wait(deadline - now)
                    continue
                heapq.heappop(self._heap)
                watch.fired = True
                watch.options.terminate = True


WATCHDOG = Watchdog()
