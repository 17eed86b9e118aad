"""One REDIS_URL for every consumer, spelled the way each library wants it."""

from __future__ import annotations

from urllib.parse import urlsplit


def celery_broker_url(redis_url: str) -> str:
    """kombu spells a Unix-socket Redis `redis+socket:///path`; redis-py spells it `unix:///path`."""
    parts = urlsplit(redis_url)
    if parts.scheme == "unix":
        query = f"?{parts.query}" if parts.query else ""
        return f"redis+socket://{parts.path}{query}"
    return redis_url
