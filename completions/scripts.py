"""The completions app's own Lua scripts (completions/lua/), each loaded once per Redis client and
called by SHA."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from balancer_project.redis_conn import get_redis, registered_script


@functools.cache
def _source(name: str) -> str:
    return (Path(__file__).parent / "lua" / f"{name}.lua").read_text()


def lua_script(name: str) -> Any:
    """completions/lua/<name>.lua, registered with the process's Redis client."""
    return registered_script(get_redis(), f"completions/{name}", lambda: _source(name))
