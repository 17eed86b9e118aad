from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.urls import include, path, re_path
from django.views.static import serve
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

urlpatterns = [
    # Before admin/: the live dashboard lives beside the admin and uses its login.
    path("admin/dashboard/", include("completions.dashboard_urls")),
    path("admin/", admin.site.urls),
    path("api/v1/", include("completions.urls")),
    # Drop-in for the official SDKs: base_url http://HOST:PORT/v1 (OpenAI), http://HOST:PORT (Anthropic).
    path("v1/", include("completions.compat_urls")),
    path(
        "api/schema/",
        SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]),
        name="schema",
    ),
    path(
        "api/docs/",
        SpectacularSwaggerView.as_view(url_name="schema", authentication_classes=[], permission_classes=[]),
        name="swagger-ui",
    ),
    path("", include("completions.ops_urls")),
]

if settings.BALANCER_SERVE_STATIC:
    # Admin and Swagger UI assets, collected into STATIC_ROOT by `make run` (collectstatic). Behind
    # a reverse proxy or CDN, turn this off and serve STATIC_ROOT from there.
    urlpatterns.append(re_path(r"^static/(?P<path>.*)$", serve, {"document_root": settings.STATIC_ROOT}))

handler400 = "completions.errors.json_400"
handler404 = "completions.errors.json_404"
handler500 = "completions.errors.json_500"
