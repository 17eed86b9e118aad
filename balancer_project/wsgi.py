"""WSGI entry point. The service is meant to run under ASGI (waiting clients cost no thread);
this exists for tools that want WSGI, such as `manage.py runserver`."""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "balancer_project.settings.local")

application = get_wsgi_application()
