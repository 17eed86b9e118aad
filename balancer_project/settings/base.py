"""Settings shared by every environment. Every value that differs per deployment comes from the
environment (django-environ); docs/configuration.md lists them all."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured
from environ.fileaware_mapping import FileAwareMapping

from balancer_project.redis_url import celery_broker_url, celery_transport_options

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(environ.Env().str("BALANCER_VAR_DIR", default=str(BASE_DIR / "var")))


class _SecretFiles(FileAwareMapping):  # type: ignore[misc]  # django-environ has no types
    """`<NAME>_FILE` names a file holding the value of `<NAME>` (a Kubernetes or Docker secret
    mounted as a file), read without the newline such files usually end with."""

    def __getitem__(self, key: str) -> str:
        value: str = super().__getitem__(key)
        return value.strip() if self.env.get(f"{key}_FILE") else value


class _Env(environ.Env):  # type: ignore[misc]
    ENVIRON = _SecretFiles()


# Every setting may come from a file instead (<NAME>_FILE): secrets need not be in the environment.
env = _Env()

SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="dev-insecure-secret-key-change-me")
DEBUG = env.bool("DJANGO_DEBUG", default=False)
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "completions",
    "ratelimit",
    "axes",
]

MIDDLEWARE = [
    "completions.middleware.JsonErrorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it answers a locked-out login attempt.
    "axes.middleware.AxesMiddleware",
]

# --- Admin login throttling (django-axes) ------------------------------------------------------
# Failed logins are counted per client address in the database, so every web process shares the
# count; past the limit that address gets 429 for the cool-off, whatever the password. Per address,
# not per user name: counting per user name would let anyone lock the admin out. (Guessing from
# many addresses at once is not stopped by this: long random passwords are the defence there.)
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env.int("BALANCER_LOGIN_FAILURE_LIMIT", default=10)
AXES_COOLOFF_TIME = timedelta(minutes=env.float("BALANCER_LOGIN_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = ["ip_address"]
AXES_RESET_ON_SUCCESS = True
# The address uvicorn saw: X-Forwarded-For is a client's to forge, and uvicorn (--proxy-headers)
# already takes it from trusted proxies only.
AXES_IPWARE_META_PRECEDENCE_ORDER = ["REMOTE_ADDR"]

ROOT_URLCONF = "balancer_project.urls"
ASGI_APPLICATION = "balancer_project.asgi.application"
WSGI_APPLICATION = "balancer_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# SQLite in the project folder unless DATABASE_URL is set (PostgreSQL in production).
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Web, worker threads and Flower write concurrently: WAL lets readers and one writer overlap,
    # IMMEDIATE takes the write lock at BEGIN so two writers queue on the busy timeout instead of
    # failing with "database is locked" when one upgrades a read lock.
    # One connection per thread, kept: opening one runs the PRAGMAs below and re-reads the schema,
    # which cost more than the query a request needs.
    DATABASES["default"]["CONN_MAX_AGE"] = None
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 30,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A connection pool per process (psycopg_pool): a worker runs a hundred calls on a hundred
    # threads and releases its connection during each upstream call, so a small pool serves
    # them all, and no request pays for a new PostgreSQL connection (a process fork) twice.
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps them instead
    # The pool checks a connection before lending it: after a PostgreSQL restart (or a connection
    # killed server-side) a dead one is replaced instead of failing the next request or task.
    # Django's backend, but a pool that replaces every dead connection at the first one found
    # (psycopg_pool alone waits seconds per dead connection: balancer_project/postgresql/base.py).
    DATABASES["default"]["ENGINE"] = "balancer_project.postgresql"
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env.int("DATABASE_POOL_MIN", default=2),
        "max_size": env.int("DATABASE_POOL_MAX", default=20),
        "timeout": env.float("DATABASE_POOL_TIMEOUT", default=30.0),
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Django 6's default for URLs typed without a scheme in forms (the admin's base_url field).
FORMS_URLFIELD_ASSUME_HTTPS = True

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("DJANGO_STATIC_ROOT", default=str(VAR_DIR / "static")))
# Serve STATIC_ROOT from this process (fine for the admin; put a proxy in front for more).
BALANCER_SERVE_STATIC = env.bool("BALANCER_SERVE_STATIC", default=True)

# --- Request limits ---------------------------------------------------------------------------
# Largest accepted request body; bigger ones get 413 before anything is parsed or stored.
BALANCER_MAX_BODY_BYTES = env.int("BALANCER_MAX_BODY_BYTES", default=1_048_576)
# A batch's input (POST /v1/files, POST /v1/messages/batches) may be this large; a batch this many
# requests (completions.client_batches).
BALANCER_BATCH_FILE_MAX_BYTES = env.int("BALANCER_BATCH_FILE_MAX_BYTES", default=20 * 1_048_576)
BALANCER_CLIENT_BATCH_MAX_LINES = env.int("BALANCER_CLIENT_BATCH_MAX_LINES", default=5_000)
DATA_UPLOAD_MAX_MEMORY_SIZE = max(BALANCER_MAX_BODY_BYTES, BALANCER_BATCH_FILE_MAX_BYTES) + 1024
# Largest reply accepted from a provider (a non-streamed body; 32 MiB). A bigger one fails its
# request with 502 `reply_too_large`, and nothing of it is stored: the worker stops reading at
# the limit. OpenAI's largest embeddings batches (2,048 inputs of 3,072 floats as JSON) exceed it;
# ask those for base64 or in smaller batches, or raise it (every reply is held in a worker's and
# a web process's memory, and in its row).
BALANCER_MAX_REPLY_BYTES = env.int("BALANCER_MAX_REPLY_BYTES", default=32 * 1024 * 1024)

# Threads per web process that run views (waiting clients need none: they wait on the event loop).
BALANCER_WEB_THREADS = env.int("BALANCER_WEB_THREADS", default=4)
# Threads per web process for the database work of requests that waited (completions.waiting).
BALANCER_WEB_DB_THREADS = env.int("BALANCER_WEB_DB_THREADS", default=4)
# A port of its own for liveness probes (`GET /health`), answered by a small process that stays
# quick while the main port is busy accepting thousands of connections; unset: no probe port.
BALANCER_HEALTH_PORT = env.int("BALANCER_HEALTH_PORT", default=0)
BALANCER_HEALTH_HOST = env.str("BALANCER_HEALTH_HOST", default="127.0.0.1")
# The probe port answers 503 once the web's event loop has not run for this long.
BALANCER_HEALTH_STALL_SECONDS = env.float("BALANCER_HEALTH_STALL_SECONDS", default=30.0)

# What balancer_project.asgi serves (a function returning the ASGI application), and what a
# worker process does for the app at start and on its heartbeat (balancer_project.celery).
BALANCER_ASGI_APPLICATION = "completions.serving.application"
BALANCER_WORKER_BOOT = "completions.worker_boot"

# --- Redis ------------------------------------------------------------------------------------
# One Redis is broker, token-bucket store and result notifier. `unix:///path` works too, and so
# does a Sentinel set: redis+sentinel://[:password@]host:port,host:port/<service>[/db]
# (balancer_project/redis_url.py, docs/operations.md "Redis Sentinel").
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")

# --- Balancer behaviour -----------------------------------------------------------------------
# YAML or JSON file declaring providers and served models, applied at start-up.
BALANCER_CONFIG = env.str("BALANCER_CONFIG", default="")
# Environment variables a provider may name as its key besides *_API_KEY (comma-separated). The
# balancer's own settings are refused whatever this says (completions/credentials.py).
BALANCER_PROVIDER_KEY_VARIABLES = env.list("BALANCER_PROVIDER_KEY_VARIABLES", default=[])
# How long POST /api/v1/completions waits for the result when the client does not say (seconds).
BALANCER_DEFAULT_WAIT_SECONDS = env.float("BALANCER_DEFAULT_WAIT_SECONDS", default=30.0)
# Upper bound on any client-requested wait (POST body `wait`, GET `?wait=`).
BALANCER_MAX_WAIT_SECONDS = env.float("BALANCER_MAX_WAIT_SECONDS", default=300.0)
# How long the OpenAI/Anthropic-compatible endpoints hold a call open for its answer (the SDKs'
# own default timeout is 600 s); past it they answer 504 with the request id to poll.
BALANCER_COMPAT_MAX_WAIT_SECONDS = env.float("BALANCER_COMPAT_MAX_WAIT_SECONDS", default=600.0)
# A compatible stream with nothing to send for this long (waiting in line, or an upstream that
# pauses) sends an SSE comment line, which the SDKs ignore: proxies that close idle connections
# after 60 s (nginx's proxy_read_timeout, cloud load balancers) keep it open.
BALANCER_STREAM_KEEPALIVE_SECONDS = env.float("BALANCER_STREAM_KEEPALIVE_SECONDS", default=10.0)
# Attempts per request when the upstream fails transiently (429, 5xx, 529, timeouts).
BALANCER_MAX_ATTEMPTS = env.int("BALANCER_MAX_ATTEMPTS", default=3)
# Base and cap of the exponential backoff between those attempts (seconds).
BALANCER_RETRY_BACKOFF_SECONDS = env.float("BALANCER_RETRY_BACKOFF_SECONDS", default=1.0)
BALANCER_RETRY_BACKOFF_MAX_SECONDS = env.float("BALANCER_RETRY_BACKOFF_MAX_SECONDS", default=30.0)
# Model groups: a deployment whose key is refused or that cannot be reached cools down at once,
# one that fails this many times in a row (5xx, timeouts) then. It takes no requests for the
# cooldown, which doubles with each one in a row (seconds, up to the max); a success ends the series.
BALANCER_COOLDOWN_SECONDS = env.float("BALANCER_COOLDOWN_SECONDS", default=10.0)
BALANCER_COOLDOWN_MAX_SECONDS = env.float("BALANCER_COOLDOWN_MAX_SECONDS", default=300.0)
BALANCER_COOLDOWN_FAILURES = env.int("BALANCER_COOLDOWN_FAILURES", default=3)
# The first request of a priority class below interactive moves up one class after being first
# of its class this many seconds: a lower class is served at least once per period (batch: two).
BALANCER_PRIORITY_AGING_SECONDS = env.float("BALANCER_PRIORITY_AGING_SECONDS", default=30.0)
# Output tokens reserved when a request names no output cap.
BALANCER_DEFAULT_OUTPUT_TOKENS = env.int("BALANCER_DEFAULT_OUTPUT_TOKENS", default=1024)
# Margins every model bucket runs with, unless its quota sets its own (docs/models-and-limits.md: "Margins"). A
# provider counts a request when it arrives, a few ms after our grant, and that delay varies:
# a bucket run at exactly the provider's rate is over it now and then. Chosen by measurement
# (python -m tests.bench ratelimit, against a fake upstream that grants no grace).
BALANCER_RATE_MARGIN = env.float("BALANCER_RATE_MARGIN", default=0.01)
BALANCER_BURST_MARGIN_SECONDS = env.float("BALANCER_BURST_MARGIN_SECONDS", default=0.1)
# Longest countdown of a wake-up task. Countdown messages are held unacknowledged in a worker's
# memory until due; keeping them far below CELERY_VISIBILITY_TIMEOUT means Redis never redelivers
# one as lost. A head that must wait longer is simply woken again.
BALANCER_MAX_COUNTDOWN_SECONDS = env.float("BALANCER_MAX_COUNTDOWN_SECONDS", default=60.0)
# How long the balancer plans for a flex-processed call to take (OpenAI advises a 15-minute
# timeout): a request goes flex by itself only with at least this long left before its deadline,
# and a flex call's provider timeout is at least this (completions.tiers).
BALANCER_FLEX_SECONDS = env.float("BALANCER_FLEX_SECONDS", default=900.0)
# The providers' batch APIs (completions.batching). A batch-class request still waiting in its
# deployment's line after BALANCER_BATCH_COLLECT_SECONDS (realtime capacity left idle takes it
# first) goes in the deployment's next provider batch, at most BALANCER_BATCH_MAX_ITEMS to a
# batch, when its deadline leaves the batch's turnaround (the deployment's, else
# BALANCER_BATCH_TURNAROUND_SECONDS) plus BALANCER_BATCH_RESERVE_SECONDS: the time kept to run
# realtime what a batch has not finished when its deadline nears (it is cancelled then). Open
# batches are polled every BALANCER_BATCH_POLL_SECONDS.
BALANCER_BATCH_COLLECT_SECONDS = env.float("BALANCER_BATCH_COLLECT_SECONDS", default=30.0)
BALANCER_BATCH_MAX_ITEMS = env.int("BALANCER_BATCH_MAX_ITEMS", default=1000)
BALANCER_BATCH_TURNAROUND_SECONDS = env.float("BALANCER_BATCH_TURNAROUND_SECONDS", default=3600.0)
BALANCER_BATCH_RESERVE_SECONDS = env.float("BALANCER_BATCH_RESERVE_SECONDS", default=900.0)
BALANCER_BATCH_POLL_SECONDS = env.float("BALANCER_BATCH_POLL_SECONDS", default=10.0)
# A running request belongs to the attempt whose worker renews its lease (completions/leases.py,
# four times per lease): a request whose lease ended (its worker died, hung, or was cut off from
# Redis this long) runs again within a few seconds of it. Its line's slot has the same lease.
BALANCER_LEASE_SECONDS = env.float("BALANCER_LEASE_SECONDS", default=20.0)
# An attempt whose call has made no progress (no chunk, no answer) for its provider's timeout
# plus this is stuck, alive or not: its worker stops renewing it.
BALANCER_LEASE_MARGIN_SECONDS = env.float("BALANCER_LEASE_MARGIN_SECONDS", default=30.0)
# A client key's line holds a request's reservation from its grant to the request's end, however
# long it then waits in its model's line and runs: every way a request ends settles it, and the
# sweep gives back any held for a request that has ended (completions.maintenance). This lease is
# only the last resort, should the sweep not run for a day.
BALANCER_KEY_HOLD_SECONDS = 86400.0
# Every process keeps copies of the API keys, served models and quotas it has looked up; a change
# made anywhere reaches the others within this many seconds (0: checked on every lookup).
BALANCER_REGISTRY_CACHE_SECONDS = env.float("BALANCER_REGISTRY_CACHE_SECONDS", default=1.0)
# How often a worker reports itself alive (seconds; from a thread of its own).
BALANCER_WORKER_REFRESH_SECONDS = env.float("BALANCER_WORKER_REFRESH_SECONDS", default=2.0)
# A worker that has not reported for this long is not counted as live by /ready (seconds).
BALANCER_WORKER_STALE_SECONDS = env.float("BALANCER_WORKER_STALE_SECONDS", default=15.0)

# --- Celery -----------------------------------------------------------------------------------
# Celery's Django fix-up closes the thread's database connections before and after every task.
# A pooled PostgreSQL connection goes back to the pool that way (a worker's hundred threads share
# a few), which is what we want; a SQLite connection would be reopened for every task instead.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    CELERY_DB_REUSE_MAX = 1_000_000_000
# SQLite: how many threads of a worker keep their connection open between tasks (each is ~170 KB;
# the others open one per use). See completions.rows.keeps_connection.
BALANCER_WORKER_DB_CONNECTIONS = env.int("BALANCER_WORKER_DB_CONNECTIONS", default=64)
# How long a worker keeps writing an attempt's outcome while the database refuses it (locked,
# restarting): the answer exists only in the worker's memory until then.
BALANCER_WORKER_DB_RETRY_SECONDS = env.float("BALANCER_WORKER_DB_RETRY_SECONDS", default=120.0)
# The broker: Redis (REDIS_URL's) unless CELERY_BROKER_URL names a RabbitMQ (amqp://…): quorum
# queues, replicated across a RabbitMQ cluster (docs/operations.md "RabbitMQ as the broker").
# Redis stays the limiter's store either way.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or celery_broker_url(REDIS_URL)
BROKER_IS_RABBITMQ = CELERY_BROKER_URL.startswith(("amqp://", "amqps://", "pyamqp://"))
if env.str("CELERY_BROKER_URL", default="") and not BROKER_IS_RABBITMQ:
    raise ImproperlyConfigured(
        "CELERY_BROKER_URL names a RabbitMQ (amqp:// or amqps://); a Redis broker is REDIS_URL's own"
    )
# Results live in the database (CompletionRequest); a result backend would store them twice.
CELERY_TASK_IGNORE_RESULT = True
# JSON only: the broker is shared infrastructure and pickle would let it run code in workers.
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Ack after the task ran, so a worker dying mid-call leaves the message for another worker.
CELERY_TASK_ACKS_LATE = True
# ... and the same when the worker process is killed (OOM, SIGKILL) rather than the task failing.
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# Take one message per free slot: prefetching more would hide queued work from other workers.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# LLM calls are I/O-bound and take seconds: one process holds many calls on threads (docs/architecture.md: "Choices").
CELERY_WORKER_POOL = env.str("CELERY_WORKER_POOL", default="threads")
# 200: one model may hold half of them (BALANCER_WORKER_MODEL_SHARE), the 100 a worker had for
# any one model before that bound existed. A thread costs its memory only while it holds a call.
CELERY_WORKER_CONCURRENCY = env.int("CELERY_WORKER_CONCURRENCY", default=200)
# Not set: it needs a pool that can terminate a job, and the threads pool cannot (Celery only warns).
# A message redelivered while its first run goes on is harmless instead: the second run's claim
# (queued -> running, compare-and-swap) finds the row running and stops.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# Flower's per-task pages need task events: four more messages per request through Redis (about
# a fifth of a worker's CPU at full load). Off by default: request history is in the admin, and
# Flower's worker pages work without them.
CELERY_WORKER_SEND_TASK_EVENTS = env.bool("BALANCER_TASK_EVENTS", default=False)
CELERY_TASK_SEND_SENT_EVENT = CELERY_WORKER_SEND_TASK_EVENTS
# Unacked messages come back after this long; it must exceed the longest upstream call plus any
# retry countdown, or the same request would run twice (ARCHITECTURE.md).
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600),
    **celery_transport_options(REDIS_URL),
}
if BROKER_IS_RABBITMQ:
    # Every queue a quorum queue (the model queues are created as they are first used); topic
    # exchanges, which Celery's delayed delivery for quorum queues needs (balancer_project.celery:
    # publish). A publish returns once the broker has the message (publisher confirms).
    CELERY_TASK_DEFAULT_QUEUE_TYPE = "quorum"
    CELERY_TASK_CREATE_MISSING_QUEUE_TYPE = "quorum"
    CELERY_TASK_DEFAULT_EXCHANGE_TYPE = "topic"
    CELERY_TASK_CREATE_MISSING_QUEUE_EXCHANGE_TYPE = "topic"
    CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
# Keep retrying the broker at start-up rather than crashing the worker when Redis is late.
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Housekeeping tasks and key-line wake-ups go here; model traffic goes to llm.<provider>.<model> queues.
CELERY_TASK_DEFAULT_QUEUE = "balancer.default"

# How often the cluster's periodic care runs (completions.maintenance.tend): the outbox of requests
# accepted while Redis was away, Redis data loss, rate-limit lines, new models (seconds).
BALANCER_TEND_SECONDS = env.float("BALANCER_TEND_SECONDS", default=2.0)
# Periodic care, run by one `celery beat` process (make run starts it), each tick on one worker.
CELERY_BEAT_SCHEDULE = {
    "tend": {"task": "completions.tend", "schedule": BALANCER_TEND_SECONDS},
    "sweep": {"task": "completions.sweep", "schedule": 30.0},
    "purge": {"task": "completions.purge", "schedule": 3600.0},
    "batches": {"task": "completions.batches", "schedule": BALANCER_BATCH_POLL_SECONDS},
}
# A queued request this old that is in no line, or whose model's queue is empty, was lost (Redis
# lost its data): the sweeper puts it back. Running ones: when their lease ends (the tend).
BALANCER_SWEEP_QUEUED_SECONDS = env.float("BALANCER_SWEEP_QUEUED_SECONDS", default=60.0)
# Finished requests older than this are deleted (hourly); 0 keeps them forever.
BALANCER_RETENTION_DAYS = env.float("BALANCER_RETENTION_DAYS", default=30.0)

# /metrics asks scrapers for this Bearer token when it is set.
BALANCER_METRICS_TOKEN = env.str("BALANCER_METRICS_TOKEN", default="")
# The most of a worker process's threads one model may hold in upstream calls (completions/shares.py):
# a slow or flooded model leaves the rest to the others. 1 turns the bound off.
BALANCER_WORKER_MODEL_SHARE = env.float("BALANCER_WORKER_MODEL_SHARE", default=0.5)
# The part of a worker's threads kept for models with few calls in flight (under a quarter of
# it), however many models are slow at once (completions/shares.py). 0 turns the reserve off.
BALANCER_WORKER_RESERVED_SHARE = env.float("BALANCER_WORKER_RESERVED_SHARE", default=0.2)
# Requests one key may have waiting at once (a key's quota may say otherwise); past it, 429 with
# retry-after of BALANCER_KEY_QUEUE_FULL_RETRY_SECONDS.
BALANCER_KEY_MAX_QUEUED = env.int("BALANCER_KEY_MAX_QUEUED", default=1000)
BALANCER_KEY_QUEUE_FULL_RETRY_SECONDS = env.float("BALANCER_KEY_QUEUE_FULL_RETRY_SECONDS", default=5.0)
# Calls of one key a web process holds open at once (long-polls, compatible calls, streams); past
# it a compatible call gets 429 and a long-poll its 202 at once (a key's quota may say otherwise).
BALANCER_KEY_MAX_WAITING = env.int("BALANCER_KEY_MAX_WAITING", default=500)
# Production: any `check --deploy` warning not waived (DJANGO_WAIVED_CHECKS) stops the start.
BALANCER_REFUSE_DEPLOY_WARNINGS = False
DEPLOY_CHECK_WAIVERS: dict[str, str] = {}

# --- DRF --------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "completions.authentication.ApiKeyAuthentication",
        "completions.authentication.StaffSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["completions.authentication.HasApiKey"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": ["completions.parsers.StrictJSONParser"],
    "EXCEPTION_HANDLER": "completions.errors.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "LLM Request Balancer API",
    "DESCRIPTION": "Queue-backed gateway that keeps every model under its provider's rate limits.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {
        "request_id": {"()": "balancer_project.logs.RequestIdFilter"},
        "client_errors_at_info": {"()": "balancer_project.logs.ClientErrorsAtInfo"},
    },
    "formatters": {
        "plain": {
            "()": "balancer_project.logs.PlainFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s",
        },
        "json": {"()": "balancer_project.logs.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": env.str("LOG_FORMAT", default="plain"),
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        # Django's own handlers print django.request a second time, bare, under DEBUG: only ours.
        "django": {"handlers": [], "level": "INFO", "propagate": True},
        "django.request": {"filters": ["client_errors_at_info"]},
        # Beat says "Sending due task" for every tend (30 a minute): only its warnings, unless
        # BALANCER_BEAT_LOG_LEVEL=INFO asks to see each tick.
        "celery.beat": {"level": env.str("BALANCER_BEAT_LOG_LEVEL", default="WARNING")},
        # httpx logs every request URL at INFO; keep worker logs about our requests.
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        # Celery's "Task ... received" / "succeeded in" lines carry no request id; the worker
        # logs one line of its own per finished request instead (completions.services).
        "celery.worker.strategy": {"level": "WARNING"},
        "celery.app.trace": {"level": "WARNING"},
    },
}
# Workers log through the configuration above (request ids, JSON) instead of Celery's own.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
