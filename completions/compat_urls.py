from __future__ import annotations

from django.urls import path

from completions.compat import ChatCompletionsApi, CountTokensApi, MessagesApi, ModelsApi
from completions.waiting import waitable

urlpatterns = [
    path("chat/completions", waitable(ChatCompletionsApi.as_view()), name="compat-chat-completions"),
    path("messages/count_tokens", CountTokensApi.as_view(), name="compat-count-tokens"),
    path("messages", waitable(MessagesApi.as_view()), name="compat-messages"),
    path("models", ModelsApi.as_view(), name="compat-models"),
]
