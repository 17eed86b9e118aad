"""The three statements every request runs, written out once instead of compiled by the ORM per
call: inserting the row (web), claiming it (queued → running, returning the row) and finishing
it (worker).

The ORM spends several times the database's own time building these statements and reading
their rows back (a RawQuerySet resolves its columns on every query). Here the SQL is built once
per process, values go through each field's own `get_db_prep_save`, and rows come back through
each field's converters, as the ORM would do it, so the results are the same model instances.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import cache
from typing import Any, TypeVar

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.db.models import Field
from django.db.models.expressions import Col

from completions.models import ApiKey, CompletionRequest, CompletionStatus

logger = logging.getLogger(__name__)
T = TypeVar("T")

META = CompletionRequest._meta
ATTNAMES = [f.attname for f in META.concrete_fields]


def returning_supported() -> bool:
    """UPDATE ... RETURNING: PostgreSQL, and SQLite from 3.35 (MySQL and MariaDB lack it)."""
    return connection.vendor == "postgresql" or (
        connection.vendor == "sqlite" and sqlite3.sqlite_version_info >= (3, 35)
    )


@cache
def _claim_sql(vendor: str, routed: bool) -> str:
    qn = connection.ops.quote_name
    columns = ", ".join(qn(f.column) for f in META.concrete_fields)
    keys = qn(ApiKey._meta.db_table)
    route = f", {qn('provider')} = %s, {qn('model')} = %s" if routed else ""
    return (
        f"UPDATE {qn(META.db_table)} SET {qn('status')} = %s, {qn('attempts')} = {qn('attempts')} + 1,"
        f" {qn('started_at')} = COALESCE({qn('started_at')}, %s), {qn('claimed_at')} = %s,"
        f" {qn('claim')} = %s{route}"
        f" WHERE {qn('id')} = %s AND {qn('status')} = %s"
        # A deactivated key's requests never start, even one accepted while its key was cached.
        f" AND EXISTS (SELECT 1 FROM {keys} WHERE {keys}.{qn('id')} = {qn(META.db_table)}.{qn('api_key_id')}"
        f" AND {keys}.{qn('is_active')})"
        f" RETURNING {columns}"
    )


@cache
def _converters(vendor: str) -> list[tuple[list[Any], Col]]:
    """Per column, the converters the ORM applies to it when it reads a row (backend's first)."""
    out = []
    for field in META.concrete_fields:
        col = Col(META.db_table, field)
        out.append((connection.ops.get_db_converters(col) + col.get_db_converters(connection), col))
    return out


@cache
def _insert_sql(vendor: str) -> str:
    qn = connection.ops.quote_name
    columns = ", ".join(qn(f.column) for f in META.concrete_fields)
    marks = ", ".join(["%s"] * len(META.concrete_fields))
    return f"INSERT INTO {qn(META.db_table)} ({columns}) VALUES ({marks})"


def insert(request: CompletionRequest) -> None:
    """INSERT a new row for `request` (fields' pre_save included: created_at is set), as
    `request.save(force_insert=True)` would, in one statement."""
    params = [
        f.get_db_prep_save(f.pre_save(request, True), connection=connection) for f in META.concrete_fields
    ]
    with connection.cursor() as cursor:
        cursor.execute(_insert_sql(connection.vendor), params)
    request._state.adding = False
    request._state.db = connection.alias


def claim(
    request_id: str, now: datetime, token: str, route: tuple[str, str] | None = None
) -> CompletionRequest | None:
    """queued → running with the attempt counted and its fencing `token` written, in one
    statement that returns the row; None when the row is not queued (another delivery, a cancel
    or the end came first). `route`: the provider and model this attempt goes to (a group's
    request), written in the same statement."""
    at = connection.ops.adapt_datetimefield_value(now)
    params = [
        CompletionStatus.RUNNING,
        at,
        at,
        token,
        *(route or ()),
        _pk(request_id),
        CompletionStatus.QUEUED,
    ]
    with connection.cursor() as cursor:
        cursor.execute(_claim_sql(connection.vendor, route is not None), params)
        rows = cursor.fetchall()  # all of them: SQLite commits when the statement completes
    if not rows:
        return None
    values = []
    for value, (converters, col) in zip(rows[0], _converters(connection.vendor), strict=True):
        for convert in converters:
            value = convert(value, col, connection)
        values.append(value)
    return CompletionRequest.from_db(connection.alias, ATTNAMES, values)


@cache
def _queued_sql(vendor: str) -> str:
    qn = connection.ops.quote_name
    return (
        f"SELECT COUNT(*) FROM (SELECT 1 FROM {qn(META.db_table)}"
        f" WHERE {qn('api_key_id')} = %s AND {qn('status')} = %s LIMIT %s) AS waiting"
    )


def queued_of_key(api_key_id: int, *, up_to: int) -> int:
    """How many of a key's requests are queued, counted up to `up_to` (a partial index holds only
    queued rows, so this reads at most `up_to` index entries whatever the key's history). Built
    once, like the other statements here: the ORM spent ten times the statement's own time."""
    if up_to <= 0:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(_queued_sql(connection.vendor), [api_key_id, CompletionStatus.QUEUED, up_to])
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def _update(
    request_id: str | uuid.UUID, from_status: str | None, claim: str | None, fields: dict[str, Any]
) -> tuple[str, list[Any]]:
    qn = connection.ops.quote_name
    sets, params = [], []
    for name, value in fields.items():
        field = META.get_field(name)
        assert isinstance(field, Field), name  # a concrete column, not a relation's reverse side
        sets.append(f"{qn(field.column)} = %s")
        params.append(field.get_db_prep_save(value, connection=connection))
    sql = f"UPDATE {qn(META.db_table)} SET {', '.join(sets)} WHERE {qn('id')} = %s"
    params.append(_pk(request_id))
    if from_status is not None:
        sql += f" AND {qn('status')} = %s"
        params.append(from_status)
    if claim is not None:
        sql += f" AND {qn('claim')} = %s"
        params.append(claim)
    return sql, params


def finish(
    request_id: str | uuid.UUID, from_status: str | None, *, claim: str | None = None, **fields: Any
) -> bool:
    """Set `fields` (model field names) on the row, if it is in `from_status` (None: any) and, with
    `claim`, still held by the attempt of that fencing token (a stale attempt's write is refused)."""
    sql, params = _update(request_id, from_status, claim, fields)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return bool(cursor.rowcount)


@dataclass(frozen=True)
class Ended:
    """What a request that has just ended leaves to settle: the budget periods it reserved in
    (CompletionRequest.budgets) and its cost."""

    budgets: str
    cost: Decimal | None


def end(
    request_id: str | uuid.UUID, from_status: str | None, *, claim: str | None = None, **fields: Any
) -> Ended | None:
    """`finish` into a final state, returning what settling it needs (None: the row was not
    changed). One statement where the database can return the row's values."""
    sql, params = _update(request_id, from_status, claim, fields)
    qn = connection.ops.quote_name
    with connection.cursor() as cursor:
        if returning_supported():
            cursor.execute(f"{sql} RETURNING {qn('budgets')}, {qn('cost')}", params)
            found = cursor.fetchall()  # all of them: SQLite commits when the statement completes
            if not found:
                return None
            budgets, cost = found[0]
        else:
            cursor.execute(sql, params)
            if not cursor.rowcount:
                return None
            budgets, cost = (
                CompletionRequest.objects.filter(id=request_id).values_list("budgets", "cost").get()
            )
    # As the field reads it (SQLite hands a number back): to its decimal places.
    places = Decimal(1).scaleb(-META.get_field("cost").decimal_places)
    return Ended(budgets or "", None if cost is None else Decimal(str(cost)).quantize(places))


def _pk(request_id: str | uuid.UUID) -> Any:
    return META.pk.get_db_prep_value(request_id, connection)


# Which worker threads keep their database connection between uses.
_keeper_slots: threading.Semaphore | None = None
_slots_lock = threading.Lock()
_thread = threading.local()


def keeps_connection() -> bool:
    """Whether this thread keeps its database connection open between tasks and through an
    upstream call; if not, the caller closes it.

    A PostgreSQL connection goes back to the process's pool (a hundred threads share a few of
    them), and one inside a transaction always stays. A SQLite connection is ~170 KB of SQLite's
    own memory and half a millisecond to open: the first BALANCER_WORKER_DB_CONNECTIONS threads of
    a worker keep theirs, which covers ordinary loads without reopening; beyond that (a thousand
    calls in flight) threads open one for each use, so memory does not grow with concurrency.
    """
    if connection.in_atomic_block:
        return True
    if connection.vendor != "sqlite":
        return False
    keeper = getattr(_thread, "keeper", None)
    if keeper is None:
        global _keeper_slots
        with _slots_lock:
            if _keeper_slots is None:
                _keeper_slots = threading.Semaphore(settings.BALANCER_WORKER_DB_CONNECTIONS)
        keeper = _thread.keeper = _keeper_slots.acquire(blocking=False)
    return bool(keeper)


def release_connection() -> None:
    """After a task: close this thread's connection unless it keeps it."""
    if connection.connection is not None and not keeps_connection():
        connection.close()


def persisting(step: Callable[[], T], *, what: str) -> T:
    """Run `step`, a write that only this thread can make (an attempt's outcome: the answer is in
    its memory and nowhere else), again and again while the database refuses it for a while —
    SQLite locked past its busy timeout, PostgreSQL restarting — on a fresh connection each time,
    for up to BALANCER_WORKER_DB_RETRY_SECONDS. Lost, the write would leave the request running
    until the sweeper ran it a second time, and its client waiting for nothing. Other errors
    (a bug, a constraint) are raised at once."""
    deadline = time.monotonic() + settings.BALANCER_WORKER_DB_RETRY_SECONDS
    delay = 0.1
    while True:
        try:
            return step()
        except (OperationalError, InterfaceError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("%s: the database refused it (%s); trying again in %.1f s", what, exc, delay)
            connection.close()  # a broken connection is opened again on the next try
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
