"""Counting database queries per process, for the benchmarks' per-request cost table.

Off unless BALANCER_QUERY_COUNT_DIR names a directory. Then every connection of the process gets
an execute wrapper (Django's documented hook) that counts statements by their first word, and
a daemon thread rewrites `<dir>/<pid>.json` with the running totals twice a second (uvicorn ends
by re-raising the signal that stopped it, so an exit hook would not run):
`{"by_kind": {"SELECT": n, ...}, "main_thread": n}`. `main_thread` counts the statements run
on the process's main thread: in a Celery worker that is the consumer's event loop, where any
statement delays message intake (the tests hold it at zero once the worker is up).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

_counts: Counter[str] = Counter()
_main_thread = 0
_lock = threading.Lock()


def _count(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
    global _main_thread
    with _lock:
        _counts[sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "?"] += 1
        if threading.current_thread() is threading.main_thread():
            _main_thread += 1
    return execute(sql, params, many, context)


def _on_connection(sender: Any, connection: Any, **kwargs: Any) -> None:
    if _count not in connection.execute_wrappers:
        connection.execute_wrappers.append(_count)


def install() -> None:
    directory = os.environ.get("BALANCER_QUERY_COUNT_DIR")
    if not directory:
        return
    from django.db.backends.signals import connection_created

    connection_created.connect(_on_connection, weak=False)

    def dump() -> None:
        path = Path(directory) / f"{os.getpid()}.json"
        written = None
        while True:
            with _lock:
                current = {"by_kind": dict(_counts), "main_thread": _main_thread}
            if current != written:
                path.with_suffix(".tmp").write_text(json.dumps(current))
                path.with_suffix(".tmp").replace(path)
                written = current
            time.sleep(0.5)

    threading.Thread(target=dump, name="query-count", daemon=True).start()
