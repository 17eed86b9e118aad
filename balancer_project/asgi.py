"""ASGI entry point (uvicorn)."""

from __future__ import annotations

import gc
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "balancer_project.settings.local")
django.setup(set_prefix=False)

from balancer_project.asgi_handler import SharedThreadASGIHandler  # noqa: E402
from balancer_project.body_limit import BodyLimit  # noqa: E402
from balancer_project.health import Liveness  # noqa: E402

application = Liveness(BodyLimit(SharedThreadASGIHandler()))

# Load the tokenizer at start-up rather than on the first request (it takes a good part of a second).
from completions.tokens import warm_up  # noqa: E402

warm_up()

# Everything loaded so far (Django, the SDKs, the tokenizer: most of the heap) lives as long as
# the process. Moving it out of the collector's reach keeps full collections short: they were
# pausing the event loop for a fifth of a second under load.
gc.freeze()
