"""Progress of long runs on stderr."""
import sys
import time
from typing import Optional, TextIO



class Progress:
    """``[ 12/380] backend case`` on stderr: rewritten in place on a terminal, a line otherwise."""

    def __init__(self, total: int, stream: Optional[TextIO] = None) -> None:
        self.total, self.done = total, 0
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.perf_counter()

    def step(self, text: str) -> None:
        self.done += 1
        width = len(str(self.total))
        line = "[{:>{w}}/{}] {:6.0f}s {}".format(self.done, self.total, time.perf_counter() - self.start, text, w=width)
        if self.tty:
            self.stream.write("\r\033[K" + line[:150])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
