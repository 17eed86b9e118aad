from __future__ import annotations

from django.urls import path

from completions.dashboard import dashboard_page, dashboard_state_view

# Under admin/dashboard/ (balancer_project/urls.py): beside the admin, with its login.
urlpatterns = [
    path("", dashboard_page, name="dashboard"),
    path("state.json", dashboard_state_view, name="dashboard-state"),
]
