"""ASGI entry point (uvicorn)."""

from __future__ import annotations

import gc
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "balancer_project.settings.local")
django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402
from django.utils.module_loading import import_string  # noqa: E402

# The application is the app's to build (its handler finishes the app's waiting responses): the
# setting names it, as ROOT_URLCONF names the URLs, so this package imports no app code.
application = import_string(settings.BALANCER_ASGI_APPLICATION)()

# Everything loaded so far (Django, the SDKs, the tokenizer: most of the heap) lives as long as
# the process. Moving it out of the collector's reach keeps full collections short: they were
# pausing the event loop for a fifth of a second under load.
gc.freeze()
