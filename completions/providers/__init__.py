"""Upstream providers behind one small interface (see `base.Provider`). A new kind of provider is
one module here plus one line in `_KINDS`."""

from __future__ import annotations

import threading

from completions.providers.anthropic import AnthropicProvider
from completions.providers.base import CompletionResult, Provider, ProviderConfig, ProviderError
from completions.providers.mock import MockProvider
from completions.providers.openai import OpenAIProvider

__all__ = ["CompletionResult", "Provider", "ProviderConfig", "ProviderError", "provider_for"]

_KINDS: dict[str, type[Provider]] = {
    "openai": OpenAIProvider,
    "anthropic": AnthropicProvider,
    "mock": MockProvider,
}

_cache: dict[ProviderConfig, Provider] = {}
_cache_lock = threading.Lock()


def provider_for(config: ProviderConfig) -> Provider:
    """The provider client for a configuration, built once per process: SDK clients keep
    connection pools, so reusing them saves a TCP (and TLS) handshake per request. A changed
    configuration (new base URL, timeout or key) is a different cache key, hence a new client."""
    with _cache_lock:
        provider = _cache.get(config)
        if provider is None:
            provider = _KINDS[config.kind](config)
            _cache[config] = provider
        return provider
