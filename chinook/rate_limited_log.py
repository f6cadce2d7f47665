"""Log lines that a flood of requests cannot multiply: at most one a window per key, the
next one saying how many were left out meanwhile."""

import logging
import threading
import time

# Keys remembered at once; past it, keys whose window is over are forgotten, and while
# none is, further keys share one more (a flood from many addresses logs a line a window).
MAX_KEYS = 10_000
OVERFLOW_KEY = ("other keys",)


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, window_s: float, clock=time.monotonic):
        self.logger = logger
        self.window_s = window_s
        self.clock = clock
        self._lock = threading.Lock()
        # key -> [when its last line was written, lines left out since]
        self._seen: dict[tuple, list] = {}

    def log(self, level: int, key: tuple, message: str, *args):
        """Writes message % args unless a line of the same key was written less than a
        window ago; then only counts it."""
        now = self.clock()
        with self._lock:
            if key not in self._seen and len(self._seen) >= MAX_KEYS:
                self._forget_since(now - self.window_s)
                if len(self._seen) >= MAX_KEYS:
                    key = OVERFLOW_KEY
            seen = self._seen.get(key)
            if seen is not None and now - seen[0] < self.window_s:
                seen[1] += 1
                return
            left_out = seen[1] if seen is not None else 0
            self._seen[key] = [now, 0]
        if left_out:
            message += " (%d more like it since the last line, not logged)"
            args = (*args, left_out)
        self.logger.log(level, message, *args)

    def _forget_since(self, moment: float):
        """Forgets the keys last logged at or before the moment, with their counts."""
        for key in [key for key, (when, _) in self._seen.items() if when <= moment]:
            del self._seen[key]
