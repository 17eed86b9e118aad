"""The operator's URLs, at the root: /health (the project's), /ready and /metrics (the app's)."""

from __future__ import annotations

from django.urls import path

from balancer_project.health import health
from completions.metrics import metrics_view
from completions.ops import ready

urlpatterns = [
    path("health", health, name="health"),
    path("ready", ready, name="ready"),
    path("metrics", metrics_view, name="metrics"),
]
