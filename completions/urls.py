from __future__ import annotations

from django.urls import path

from completions.apis import CompletionDetailApi, CompletionListApi
from completions.queues import QueueDetailApi, QueueListApi
from completions.spend_api import SpendApi
from completions.waiting import waitable

urlpatterns = [
    path("completions", waitable(CompletionListApi.as_view()), name="completion-list"),
    path("completions/<uuid:pk>", waitable(CompletionDetailApi.as_view()), name="completion-detail"),
    path("queues", QueueListApi.as_view(), name="queue-list"),
    path("spend", SpendApi.as_view(), name="spend"),
    # Model names may contain "/" (meta-llama/Llama-3.1-8B-Instruct).
    path("queues/<str:provider>/<path:model>", QueueDetailApi.as_view(), name="queue-detail"),
]
