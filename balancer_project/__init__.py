"""Django project package: settings, URLs, ASGI entry point and the Celery app."""

from __future__ import annotations

from .celery import app as celery_app
from .rlimits import raise_open_files_limit

raise_open_files_limit()

__all__ = ["celery_app"]
