from __future__ import annotations

from django.urls import path

from completions.batch_api import (
    BatchCancelApi,
    BatchDetailApi,
    BatchesApi,
    FileContentApi,
    FileDetailApi,
    FilesApi,
    MessageBatchCancelApi,
    MessageBatchDetailApi,
    MessageBatchesApi,
    MessageBatchResultsApi,
)
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
    path("messages/batches", MessageBatchesApi.as_view(), name="compat-message-batches"),
    path("messages/batches/<str:public_id>", MessageBatchDetailApi.as_view(), name="compat-message-batch"),
    path(
        "messages/batches/<str:public_id>/cancel",
        MessageBatchCancelApi.as_view(),
        name="compat-message-batch-cancel",
    ),
    path(
        "messages/batches/<str:public_id>/results",
        MessageBatchResultsApi.as_view(),
        name="compat-message-batch-results",
    ),
    path("files", FilesApi.as_view(), name="compat-files"),
    path("files/<str:public_id>", FileDetailApi.as_view(), name="compat-file"),
    path("files/<str:public_id>/content", FileContentApi.as_view(), name="compat-file-content"),
    path("batches", BatchesApi.as_view(), name="compat-batches"),
    path("batches/<str:public_id>", BatchDetailApi.as_view(), name="compat-batch"),
    path("batches/<str:public_id>/cancel", BatchCancelApi.as_view(), name="compat-batch-cancel"),
    path("models", ModelsApi.as_view(), name="compat-models"),
    path("models/<path:model_id>", ModelDetailApi.as_view(), name="compat-model-detail"),
]
