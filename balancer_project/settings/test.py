"""Settings for the test suite. The live web and worker processes the suite starts use them too,
so every value that must be shared with those processes comes from the environment."""

from __future__ import annotations

from .base import *  # noqa: F403
from .base import DATABASES, VAR_DIR, env

DEBUG = False
ALLOWED_HOSTS = ["*"]
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# The test database is shared with the web and worker processes the suite starts, so an in-memory
# SQLite database (pytest-django's default) would not do: use a file they can open too.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {
        "NAME": env.str("BALANCER_TEST_DB", default=str(VAR_DIR / "test-db.sqlite3")),
    }

# Short enough that the tests need not wait long for a worker to notice a new model.
BALANCER_WORKER_REFRESH_SECONDS = 0.5
BALANCER_RETRY_BACKOFF_SECONDS = 0.2
BALANCER_RETRY_BACKOFF_MAX_SECONDS = 1.0
BALANCER_TEND_SECONDS = 0.5
# Leases short enough that a call outlives several of them, and a lost one is run again soon; a
# call stuck for its provider's timeout plus 5 s stops being renewed.
BALANCER_LEASE_SECONDS = 4.0
BALANCER_LEASE_MARGIN_SECONDS = 5.0
# Replies past 4 MiB are refused, so the tests can send one without moving 32 MiB around.
BALANCER_MAX_REPLY_BYTES = 4 * 1024 * 1024
# Waits in line longer than this are chains of wake-ups (tests/completions/test_without_beat.py).
BALANCER_MAX_COUNTDOWN_SECONDS = 2.0
# Provider batches (completions.batching): collected after a second in line, polled twice a second,
# cancelled 5 s before their deadline.
BALANCER_BATCH_COLLECT_SECONDS = 1.0
BALANCER_BATCH_POLL_SECONDS = 0.5
BALANCER_BATCH_RESERVE_SECONDS = 5.0
CELERY_BEAT_SCHEDULE = {
    **CELERY_BEAT_SCHEDULE,  # noqa: F405
    "tend": {"task": "completions.tend", "schedule": 0.5},
    "batches": {"task": "completions.batches", "schedule": 0.5},
}
