"""Time as the DigitalOcean API client and the local API server see it.

A :class:`Clock` with ``scale`` above 1 runs faster than the wall clock: at ``scale=20`` one real
second is twenty API seconds. The local server and the client each take a clock with the same
scale, so rate-limit windows, ``retry-after`` values, boot delays, poll intervals and deadlines
all shrink together and a 4,700-droplet run takes seconds instead of minutes. Both sides measure
durations only; the client never compares its clock with the server's, it reads the server's own
``Date`` header where it needs the server's time.
"""

from __future__ import annotations

import time


class Clock:
    """Monotonic and epoch time, optionally scaled; ``Clock()`` is the real wall clock."""

    def __init__(self, scale: float = 1.0):
        if scale <= 0:
            raise ValueError(f"clock scale is {scale}; use a positive number (1.0 is real time)")
        self.scale = scale
        self._monotonic_origin = time.monotonic()
        self._epoch_origin = time.time()

    def monotonic(self) -> float:
        """Return API seconds since the clock was made."""
        return (time.monotonic() - self._monotonic_origin) * self.scale

    def time(self) -> float:
        """Return the API's Unix time: the real time at creation plus scaled elapsed time."""
        return self._epoch_origin + self.monotonic()

    def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` API seconds (``seconds / scale`` real seconds)."""
        if seconds > 0:
            time.sleep(seconds / self.scale)

    def __repr__(self) -> str:
        return f"Clock(scale={self.scale})"
