"""Expected conditions (the cache down, Ollama unreachable, a client asking for what is not served yet): logged once.

A condition that every request meets while it lasts would otherwise log a line per request, at error level, for
something the gateway handles by design. Here it is one warning when it begins, in this process, and one info line
when it clears (with how many requests met it meanwhile); if it recurs, it is logged again. Errors stay for what
needs a person. Each request's own line (gateway.request) still names its error type.
"""

from __future__ import annotations

import logging
import threading
import weakref

_every: weakref.WeakSet = weakref.WeakSet()


def forget_all() -> None:
    """Every condition back to "not met" without logging (a test starts from a process that has seen nothing)."""
    for condition in list(_every):
        with condition._lock:
            condition._active, condition._count = False, 0


class Condition:
    """One condition of one process: `occurred()` on each request that meets it, `cleared()` once it is over."""

    def __init__(self, logger: logging.Logger, name: str):
        self.logger = logger
        self.name = name
        self._lock = threading.Lock()
        self._active = False
        self._count = 0
        _every.add(self)

    @property
    def active(self) -> bool:
        return self._active

    def occurred(self, message: str, **extra) -> None:
        """The condition met by one more request; logged (at warning) only if it was not active already."""
        with self._lock:
            self._count += 1
            if self._active:
                return
            self._active = True
        self.logger.warning(message, extra={"condition": self.name, **extra})

    def cleared(self, message: str, **extra) -> None:
        """The condition is over; logged (at info) only if it was active. Cheap when it was not."""
        if not self._active:  # the common case, read without the lock: at worst one request late
            return
        with self._lock:
            if not self._active:
                return
            self._active, count, self._count = False, self._count, 0
        self.logger.info(message, extra={"condition": self.name, "occurrences": count, **extra})


class Conditions:
    """Conditions by key, made on first use (e.g. one per unimplemented endpoint)."""

    def __init__(self, logger: logging.Logger, prefix: str):
        self.logger = logger
        self.prefix = prefix
        self._by_key: dict[str, Condition] = {}
        self._lock = threading.Lock()

    def __getitem__(self, key: str) -> Condition:
        condition = self._by_key.get(key)
        if condition is None:
            with self._lock:
                condition = self._by_key.setdefault(key, Condition(self.logger, f"{self.prefix}:{key}"))
        return condition

    def all(self) -> list[Condition]:
        return list(self._by_key.values())
