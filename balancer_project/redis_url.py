"""One REDIS_URL for every consumer, spelled the way each library wants it.

REDIS_URL names one Redis (`redis://`, `rediss://`, `unix://`) or a Sentinel set watching a
primary and its replicas:

    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db][?sentinel_password=…]

`host:port` are the sentinels (port 26379 when left out), `service` the name they monitor the
primary under (`sentinel monitor <service> …`), `password` the primary's and replicas'. Every
client the project makes (the limiter's, the streams' and listeners', Celery's broker through
kombu's Sentinel transport, `make run`'s) asks the sentinels where the primary is, and asks
again after a failover.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379


class RedisUrlError(ValueError):
    pass


@dataclass(frozen=True)
class SentinelSet:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None

    def server_kwargs(self) -> dict[str, Any]:
        """What a connection to the primary needs besides its address."""
        found: dict[str, Any] = {"db": self.db}
        if self.username:
            found["username"] = self.username
        if self.password:
            found["password"] = self.password
        return found

    def sentinel_kwargs(self) -> dict[str, Any]:
        """What a connection to a sentinel needs (its own password, if it has one)."""
        return {"password": self.sentinel_password} if self.sentinel_password else {}


def _host_port(text: str) -> tuple[str, int]:
    if ":" not in text or text.endswith("]"):  # no port (an IPv6 address is in brackets)
        host, port = text, ""
    else:
        host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host:
        raise RedisUrlError(f"a sentinel address without a host: {text!r}")
    try:
        number = int(port) if port else SENTINEL_PORT
    except ValueError:
        raise RedisUrlError(f"a sentinel port that is not a number: {text!r}") from None
    if not 0 < number < 65536:
        raise RedisUrlError(f"a sentinel port out of range: {text!r}")
    return host, number


def sentinel_set(url: str) -> SentinelSet | None:
    """The Sentinel set `url` names, or None when it names one Redis."""
    scheme, _, rest = url.partition("://")
    if scheme != SENTINEL_SCHEME:
        return None
    netloc, _, path = rest.partition("/")
    path, _, query = path.partition("?")
    userinfo, at, hosts = netloc.rpartition("@")
    if not at:
        hosts, userinfo = netloc, ""
    username, _, password = userinfo.partition(":")
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise RedisUrlError(f"{SENTINEL_SCHEME}:// needs the service name the sentinels monitor: …/<service>")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise RedisUrlError(f"{SENTINEL_SCHEME}://…/<service>[/<db>]: the database is a number")
    sentinels = tuple(_host_port(h) for h in hosts.split(",") if h)
    if not sentinels:
        raise RedisUrlError(f"{SENTINEL_SCHEME}:// names no sentinel")
    options = parse_qs(query)
    sentinel_password = options.get("sentinel_password", [None])[0]
    return SentinelSet(
        sentinels=sentinels,
        service=unquote(parts[0]),
        db=int(parts[1]) if len(parts) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_password=sentinel_password,
    )


def celery_broker_url(redis_url: str) -> str:
    """kombu spells a Unix-socket Redis `redis+socket:///path`; redis-py spells it `unix:///path`.
    A Sentinel set is kombu's `sentinel://` URLs, one per sentinel, joined by `;` (the service
    name goes in the transport options: celery_transport_options)."""
    found = sentinel_set(redis_url)
    if found is not None:
        auth = ""
        if found.password:
            auth = f"{quote(found.username or '', safe='')}:{quote(found.password, safe='')}@"
        return ";".join(
            f"sentinel://{auth}{f'[{host}]' if ':' in host else host}:{port}/{found.db}"
            for host, port in found.sentinels
        )
    parts = urlsplit(redis_url)
    if parts.scheme == "unix":
        query = f"?{parts.query}" if parts.query else ""
        return f"redis+socket://{parts.path}{query}"
    return redis_url


def celery_transport_options(redis_url: str) -> dict[str, Any]:
    """What kombu's Sentinel transport needs besides its URLs; nothing for one Redis."""
    found = sentinel_set(redis_url)
    if found is None:
        return {}
    options: dict[str, Any] = {"master_name": found.service}
    if found.sentinel_kwargs():
        options["sentinel_kwargs"] = found.sentinel_kwargs()
    return options
