"""Upstream providers behind one small interface (see `base.Provider`). A new kind of provider is
one module here plus one line in `_KINDS`.

A provider's module (and its SDK) is imported the first time a worker calls that kind: the two
SDKs take ~100 MB of memory, which web processes never need and a worker only for the kinds it
serves."""

from __future__ import annotations

import importlib
import threading

from completions.providers.base import CompletionResult, Provider, ProviderConfig, ProviderError

__all__ = ["CompletionResult", "Provider", "ProviderConfig", "ProviderError", "provider_for"]

_KINDS: dict[str, str] = {
    "openai": "completions.providers.openai:OpenAIProvider",
    "anthropic": "completions.providers.anthropic:AnthropicProvider",
    "mock": "completions.providers.mock:MockProvider",
}


def provider_class(kind: str) -> type[Provider]:
    module, _, name = _KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


_cache: dict[ProviderConfig, Provider] = {}
_cache_lock = threading.Lock()


def provider_for(config: ProviderConfig) -> Provider:
    """The provider client for a configuration, built once per process: SDK clients keep
    connection pools, so reusing them saves a TCP (and TLS) handshake per request. A changed
    configuration (new base URL, timeout or key) is a different cache key, hence a new client."""
    with _cache_lock:
        provider = _cache.get(config)
        if provider is None:
            provider = provider_class(config.kind)(config)
            _cache[config] = provider
        return provider
