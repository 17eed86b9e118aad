"""Names of lines (no imports: models of either app may use them)."""

from __future__ import annotations


def line_name(provider: str, model: str) -> str:
    """The line of a provider/model pair with a quota."""
    return f"{provider}/{model}"


def group_line(group: str) -> str:
    """The line of a model group: one line for all its deployments (ratelimit/lua/_lib.lua)."""
    return f"group:{group}"


def is_group_line(line: str) -> bool:
    return line.startswith("group:")


def group_of_line(line: str) -> str:
    return line.removeprefix("group:")


def key_line(api_key_id: int) -> str:
    """The line of a client key with a rate quota; its requests pass it before their model's line."""
    return f"key:{api_key_id}"


def is_key_line(line: str) -> bool:
    return line.startswith("key:")


def key_of_line(line: str) -> int:
    """The client key whose line `line` is (is_key_line)."""
    return int(line.removeprefix("key:"))
