"""Build an LLM from a short spec string, as the CLI, configs and the service name them.

    transformers:gemma3-270m            embedded model or local HF folder (default backend)
    gemma3-270m                         same
    openai:MODEL@http://host:port/v1    any OpenAI-compatible server (vLLM, Ollama, ...)
    llamacpp:/path/model.gguf           llama.cpp (optional extra)
    fake:NAME[@SECONDS]                 tests only: the deterministic FakeLLM, optionally
                                        sleeping SECONDS per call (a slow model in a kill test)
"""

from __future__ import annotations

from personalign.runtime.errors import ConfigError
from personalign.runtime.llm.base import LLM


def parse_spec(spec: str) -> tuple[str, str]:
    """(backend, the rest): a spec without a backend runs on transformers."""
    if ":" in spec.split("@")[0]:
        backend, _, rest = spec.partition(":")
        return backend, rest
    return "transformers", spec


def prepare_llm(spec: str) -> None:
    """Make ready what ``load_llm(spec)`` loads (a GGUF assembled, a folder dequantized), here
    and once: worker processes that load it next must not each convert it."""
    from personalign.runtime import models

    backend, rest = parse_spec(spec)
    if rest in models.EMBEDDED:
        if backend == "transformers":
            models.resolve(rest)
        elif backend == "llamacpp":
            models.prepare(rest)


def load_llm(spec: str, **options) -> LLM:
    backend, rest = parse_spec(spec)
    if backend == "transformers":
        from personalign.runtime.llm.transformers_backend import TransformersLLM

        return TransformersLLM(rest, **options)
    if backend == "openai":
        from personalign.runtime.llm.openai_backend import OpenAILLM

        model, _, base_url = rest.partition("@")
        return OpenAILLM(model=model, base_url=base_url or None, **options)
    if backend == "llamacpp":
        from personalign.runtime.llm.llamacpp_backend import LlamaCppLLM

        return LlamaCppLLM(rest, **options)
    if backend == "fake":
        from personalign.runtime.llm.fake import FakeLLM

        name, _, delay = rest.partition("@")
        try:
            return FakeLLM(model_id=f"fake:{name}", delay=float(delay or 0), **options)
        except ValueError:
            raise ConfigError(f"fake LLM delay must be seconds, got {delay!r}") from None
    raise ConfigError(f"unknown LLM backend {backend!r} in {spec!r} "
                      "(use transformers:, openai: or llamacpp:)")
