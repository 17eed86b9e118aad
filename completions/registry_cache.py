"""Per-process copies of the registry rows every request reads: its API key (with the key's
quota and allowed models), the served model its body names, the model's quota, the provider
settings a worker calls with, and the prices and budgets a request is charged by. Reading them from the database took three of a request's queries.

Consistency: every change to those tables (post_save, post_delete, m2m_changed) clears this
process's copies at once and, after the commit, increments a version number in Redis. Other
processes compare their version with Redis's at most every BALANCER_REGISTRY_CACHE_SECONDS
(default 1 s; 0 compares on every lookup) and drop everything when it moved, so a revoked key or
a changed quota is in force everywhere within that time. When Redis cannot be read, nothing is
cached: every lookup goes to the database, as it did before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.db import transaction

from balancer_project.redis_conn import get_redis

logger = logging.getLogger(__name__)

VERSION_KEY = "balancer:registry:version"
# Keys come from clients (model names); past this many entries the copies are dropped and rebuilt.
MAX_ENTRIES = 10_000
T = TypeVar("T")


class RegistryCache:
    def __init__(self) -> None:
        self._entries: dict[Any, Any] = {}
        self._version: str | None = None
        self._checked_at = float("-inf")
        self._lock = threading.Lock()

    def get(self, key: Any, load: Callable[[], T], keep_empty: bool = False) -> T:
        """The cached value of `key`, else `load()`'s, kept while the registry is unchanged.
        An empty value (None, []) is kept only with `keep_empty`: clients choose the names they
        look up, and "no such key" or "no such model" must not fill the memory."""
        if not self._fresh():
            return load()
        try:
            return self._entries[key]  # type: ignore[no-any-return]
        except KeyError:
            pass
        generation = self._entries
        value = load()
        if value or keep_empty:
            with self._lock:
                # A change seen while loading replaced the dict: this value may predate it.
                if generation is self._entries:
                    if len(self._entries) >= MAX_ENTRIES:
                        self._entries = {}
                    self._entries[key] = value
        return value

    def _fresh(self) -> bool:
        """Whether the copies may be used: they match Redis's version as of at most
        BALANCER_REGISTRY_CACHE_SECONDS ago."""
        now = time.monotonic()
        if now - self._checked_at < settings.BALANCER_REGISTRY_CACHE_SECONDS:
            return self._version is not None
        try:
            version = str(get_redis().get(VERSION_KEY) or "0")
        except Exception:
            logger.warning("registry version unreadable; reading the database", exc_info=True)
            self.clear()
            return False
        with self._lock:
            if version != self._version:
                self._entries = {}
                self._version = version
            self._checked_at = now
        return True

    def clear(self) -> None:
        with self._lock:
            self._entries = {}
            self._version = None
            self._checked_at = float("-inf")


registry_cache = RegistryCache()


def registry_changed(**kwargs: Any) -> None:
    """Signal receiver for every registry table: forget here now, everywhere after the commit."""
    registry_cache.clear()

    def announce() -> None:
        registry_cache.clear()
        try:
            get_redis().incr(VERSION_KEY)
        except Exception:
            # The other processes cannot compare versions either, so they read the database.
            logger.warning("could not announce a registry change", exc_info=True)

    transaction.on_commit(announce)


def connect_signals() -> None:
    from django.db.models.signals import m2m_changed, post_delete, post_save

    from completions.models import ApiKey, Budget, DeploymentPrice, ModelGroup, Provider, ServedModel
    from ratelimit.models import KeyQuota, Quota

    for model in (ApiKey, Provider, ServedModel, ModelGroup, Quota, KeyQuota, DeploymentPrice, Budget):
        post_save.connect(registry_changed, sender=model, dispatch_uid=f"registry-save-{model.__name__}")
        post_delete.connect(registry_changed, sender=model, dispatch_uid=f"registry-delete-{model.__name__}")
    m2m_changed.connect(
        registry_changed, sender=KeyQuota.allowed_models.through, dispatch_uid="registry-allowed-models"
    )
