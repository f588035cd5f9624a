"""Counting open event streams, by the token that opened them and in all."""

from __future__ import annotations

from collections import Counter

from web.http.errors import ApiError

# Seconds a refused stream is told to wait before trying again.
RETRY_AFTER_S = 10


class StreamSlots:
    """Counts open event streams by the token that opened them, and in all."""

    def __init__(self, *, per_key: int, total: int) -> None:
        if per_key < 1 or total < 1:
            raise ValueError("per_key and total must be >= 1")
        self.per_key = per_key
        self.total = total
        self._open: Counter[str] = Counter()

    @property
    def open_streams(self) -> int:
        return self._open.total()

    def take(self, key: str) -> None:
        """Count one more stream on `key`, or raise the ApiError that refuses it."""
        if self._open[key] >= self.per_key:
            raise ApiError(
                429,
                f"This session or link already has {self.per_key} event streams open, the "
                "most it may; close one (another tab) first.",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        if self.open_streams >= self.total:
            raise ApiError(
                503,
                "The server has as many event streams open as it takes; try again shortly.",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )
        self._open[key] += 1

    def give_back(self, key: str) -> None:
        self._open[key] -= 1
        if self._open[key] <= 0:
            del self._open[key]
