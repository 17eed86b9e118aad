"""ASGI entry point (uvicorn)."""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "balancer_project.settings.local")
django.setup(set_prefix=False)

from balancer_project.asgi_handler import SharedThreadASGIHandler  # noqa: E402

application = SharedThreadASGIHandler()

# Load the tokenizer at start-up rather than on the first request (it takes a good part of a second).
from completions.tokens import warm_up  # noqa: E402

warm_up()
