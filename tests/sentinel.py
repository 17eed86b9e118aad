"""A Redis Sentinel set of the test's own on 127.0.0.1: a primary, a replica and three sentinels,
each a real redis-server on a free port, started and stopped by PID (tests.live.ManagedProcess).

Sentinels here decide fast: a primary that has not answered for `down_after_ms` is down, and
two of the three must agree (the quorum) before one of them promotes the replica."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import redis

from balancer_project.embedded_redis import redis_server_binary
from tests.live import ManagedProcess, free_port, wait_until

SERVICE = "balancer"


class RedisSentinels:
    def __init__(self, directory: Path, down_after_ms: int = 1000) -> None:
        self.directory = directory
        self.down_after_ms = down_after_ms
        self.ports = {"a": free_port(), "b": free_port()}
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.servers: dict[str, ManagedProcess] = {}
        self.sentinels: list[ManagedProcess] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def _server(self, name: str, replica_of: int | None = None) -> ManagedProcess:
        folder = self.directory / f"redis-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--port",
            str(self.ports[name]),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(folder),
            "--save",
            "",
            "--appendonly",
            "no",
            "--maxmemory-policy",
            "noeviction",
        ]
        if replica_of is not None:
            args += ["--replicaof", "127.0.0.1", str(replica_of)]
        server = ManagedProcess(f"redis-{name}", args, {}, self.directory)
        server.start()
        client = redis.Redis(port=self.ports[name], socket_timeout=1)
        wait_until(lambda: _pings(client), 15, f"redis {name} to answer")
        return server

    def start(self) -> RedisSentinels:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.servers["a"] = self._server("a")
        self.servers["b"] = self._server("b", replica_of=self.ports["a"])
        replica = redis.Redis(port=self.ports["b"], socket_timeout=1)
        wait_until(
            lambda: replica.info("replication").get("master_link_status") == "up", 15, "the replica to sync"
        )
        for n, port in enumerate(self.sentinel_ports):
            conf = self.directory / f"sentinel-{n}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.directory}\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.ports['a']} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {self.down_after_ms}\n"
                f"sentinel failover-timeout {SERVICE} 10000\n"
                f"sentinel parallel-syncs {SERVICE} 1\n"
            )
            sentinel = ManagedProcess(
                f"sentinel-{n}", [redis_server_binary(), str(conf), "--sentinel"], {}, self.directory
            )
            sentinel.start()
            self.sentinels.append(sentinel)
        for port in self.sentinel_ports:
            watcher = redis.Redis(port=port, socket_timeout=1)
            # Each sentinel knows the replica and the other two before the test relies on them.
            wait_until(lambda w=watcher: _knows_all(w), 30, "the sentinels to find each other")
        return self

    def primary_port(self) -> int:
        """Where the sentinels say the primary is now."""
        for port in self.sentinel_ports:
            try:
                _, found = redis.Redis(port=port, socket_timeout=1).sentinel_get_master_addr_by_name(SERVICE)
                return int(found)
            except (redis.RedisError, TypeError):
                continue
        raise RuntimeError("no sentinel answers")

    def kill_primary(self) -> tuple[str, float]:
        """SIGKILL the primary: which one it was, and when (time.monotonic)."""
        port = self.primary_port()
        name = next(n for n, p in self.ports.items() if p == port)
        process = self.servers[name].process
        assert process is not None
        process.send_signal(signal.SIGKILL)
        at = time.monotonic()
        process.wait()
        return name, at

    def stop(self) -> None:
        for process in [*self.sentinels, *self.servers.values()]:
            process.stop()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _knows_all(sentinel: redis.Redis) -> bool:
    try:
        state = sentinel.sentinel_master(SERVICE)
    except redis.RedisError:
        return False
    return int(state.get("num-slaves", 0)) >= 1 and int(state.get("num-other-sentinels", 0)) >= 2
