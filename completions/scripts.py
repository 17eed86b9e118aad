"""The completions app's own Lua scripts (completions/lua/), each loaded once per Redis client and
called by SHA (redis-py's Script loads it again after a restart)."""

from __future__ import annotations

import functools
import threading
from pathlib import Path
from typing import Any

from balancer_project.redis_conn import get_redis

_scripts: dict[tuple[int, str], Any] = {}
_lock = threading.Lock()


@functools.cache
def _source(name: str) -> str:
    return (Path(__file__).parent / "lua" / f"{name}.lua").read_text()


def lua_script(name: str) -> Any:
    """completions/lua/<name>.lua, registered with this thread's Redis client."""
    client = get_redis()
    key = (id(client), name)
    script = _scripts.get(key)
    if script is None:
        with _lock:
            script = _scripts.get(key) or client.register_script(_source(name))
            _scripts[key] = script
    return script
