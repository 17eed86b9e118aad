from __future__ import annotations

from django.urls import path

from completions.apis import CompletionDetailApi, CompletionListApi, waitable

urlpatterns = [
    path("completions", waitable(CompletionListApi.as_view()), name="completion-list"),
    path("completions/<uuid:pk>", waitable(CompletionDetailApi.as_view()), name="completion-detail"),
]
