from __future__ import annotations

from django.urls import path

from ratelimit.apis import QueueDetailApi, QueueListApi

urlpatterns = [
    path("queues", QueueListApi.as_view(), name="queue-list"),
    # Model names may contain "/" (meta-llama/Llama-3.1-8B-Instruct).
    path("queues/<str:provider>/<path:model>", QueueDetailApi.as_view(), name="queue-detail"),
]
