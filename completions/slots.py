"""Counts of things held at once per key, each up to a cap, in one process and thread-safe: the
open calls of a client key in a web process (completions.waiting) and the upstream calls of a
model in a worker (completions.shares)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable


class Slots:
    def __init__(self) -> None:
        # Held by subclasses that change more than the counts in the same step.
        self.lock = threading.Lock()
        self._held: dict[Hashable, int] = {}

    def take(self, key: Hashable, cap: int | None) -> Callable[[], None] | None:
        """One more for `key` (cap None: no cap): the function that gives it back (once, however
        often it is called), or None when `key` holds `cap` already."""
        with self.lock:
            return self.take_locked(key, cap)

    def take_locked(self, key: Hashable, cap: int | None) -> Callable[[], None] | None:
        """`take`, for a caller that holds `lock`."""
        if self.full_locked(key, cap):
            return None
        held = self._held.get(key, 0)
        self._held[key] = held + 1
        given = threading.Event()

        def give() -> None:
            with self.lock:
                if given.is_set():
                    return
                given.set()
                left = self._held.get(key, 1) - 1
                if left > 0:
                    self._held[key] = left
                else:
                    self._held.pop(key, None)

        return give

    def full_locked(self, key: Hashable, cap: int | None) -> bool:
        return cap is not None and self._held.get(key, 0) >= cap
