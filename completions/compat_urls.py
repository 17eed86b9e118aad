from __future__ import annotations

from django.urls import path

from completions.compat import (
    ChatCompletionsApi,
    CountTokensApi,
    EmbeddingsApi,
    MessagesApi,
    ModelDetailApi,
    ModelsApi,
    ResponsesApi,
)
from completions.waiting import waitable

urlpatterns = [
    path("chat/completions", waitable(ChatCompletionsApi.as_view()), name="compat-chat-completions"),
    path("responses", waitable(ResponsesApi.as_view()), name="compat-responses"),
    path("embeddings", waitable(EmbeddingsApi.as_view()), name="compat-embeddings"),
    path("messages/count_tokens", CountTokensApi.as_view(), name="compat-count-tokens"),
    path("messages", waitable(MessagesApi.as_view()), name="compat-messages"),
    path("models", ModelsApi.as_view(), name="compat-models"),
    path("models/<path:model_id>", ModelDetailApi.as_view(), name="compat-model-detail"),
]
