"""Calls to a tier's model through the real `openai` client (any OpenAI-compatible endpoint).

Backoff is the client's own: it retries 408/409/429/5xx, connection errors and timeouts with exponential
backoff and jitter, honouring Retry-After; `max_retries` bounds it. What still fails is returned, not raised,
so one bad prompt never sinks a batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import openai

from routeyard.redact import redact
from routeyard.settings import Endpoint


@dataclass(frozen=True)
class CallResult:
    ok: bool
    status_code: int | None
    response: dict[str, Any] | None
    answer: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    error: str | None = None


class ModelClient:
    def __init__(self, endpoint: Endpoint, *, max_retries: int, timeout_s: float, secrets: list[str]) -> None:
        self.endpoint = endpoint
        self.secrets = secrets
        key = endpoint.api_key.get_secret_value()
        if not key and endpoint.base_url:
            key = "EMPTY"  # local servers (vLLM, Ollama) take any key; OpenAI itself falls back to OPENAI_API_KEY
        self.client: openai.AsyncOpenAI | None = None
        self.setup_error: str | None = None
        try:
            self.client = openai.AsyncOpenAI(base_url=endpoint.base_url, api_key=key or None,
                                             max_retries=max_retries, timeout=timeout_s)
        except openai.OpenAIError as exc:  # e.g. no key at all: every call fails with why, the process does not
            tier = endpoint.tier.upper()
            self.setup_error = redact(f"cannot call the {endpoint.tier} model: {exc} (set ROUTEYARD_{tier}_API_KEY, "
                                      f"or ROUTEYARD_{tier}_BASE_URL for a server that needs none)", secrets)

    @property
    def model(self) -> str:
        return self.endpoint.model

    async def complete(self, body: dict[str, Any]) -> CallResult:
        """One chat completion for `body` (an OpenAI request body without `model`)."""
        start = time.perf_counter()
        if self.client is None:
            return self._failure(start, None, self.setup_error or "no client")
        try:
            completion = await self.client.chat.completions.create(**{**body, "model": self.model})
        except openai.APIStatusError as exc:
            return self._failure(start, exc.status_code, f"{type(exc).__name__}: {exc}")
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            return self._failure(start, None, f"{type(exc).__name__}: {exc}")
        except (openai.OpenAIError, TypeError, ValueError) as exc:  # bad request parameters, client config
            return self._failure(start, None, f"{type(exc).__name__}: {exc}")
        latency_ms = (time.perf_counter() - start) * 1000
        usage = completion.usage
        answer = completion.choices[0].message.content if completion.choices else None
        return CallResult(True, 200, completion.model_dump(mode="json", exclude_none=True), answer,
                          usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0, latency_ms)

    def _failure(self, start: float, status: int | None, message: str) -> CallResult:
        return CallResult(False, status, None, None, 0, 0, (time.perf_counter() - start) * 1000,
                          redact(message, self.secrets)[:2000])

    async def aclose(self) -> None:
        if self.client is not None:
            await self.client.close()


def probe(endpoint: Endpoint, timeout_s: float = 10.0) -> tuple[bool, str]:
    """Whether a tier's endpoint answers, takes its key and serves its model (`GET /models`; servers that do not
    list models count as reachable). No completion is bought."""
    key = endpoint.api_key.get_secret_value() or ("EMPTY" if endpoint.base_url else None)
    where = endpoint.base_url or "api.openai.com"
    try:
        client = openai.OpenAI(base_url=endpoint.base_url, api_key=key, max_retries=0, timeout=timeout_s)
        served = [m.id for m in client.models.list()]
    except openai.AuthenticationError:
        return False, f"{where} refused the key (ROUTEYARD_{endpoint.tier.upper()}_API_KEY)"
    except openai.NotFoundError:
        return True, f"{where} answers (it does not list its models)"
    except openai.APIConnectionError as exc:
        return False, f"cannot reach {where} (ROUTEYARD_{endpoint.tier.upper()}_BASE_URL): {exc}"
    except openai.OpenAIError as exc:
        return False, f"{where}: {type(exc).__name__}: {exc}"
    if served and endpoint.model not in served:
        return False, (f"{where} does not serve {endpoint.model!r} (ROUTEYARD_{endpoint.tier.upper()}_MODEL); it "
                       f"serves {', '.join(served[:8])}{' ...' if len(served) > 8 else ''}")
    return True, f"{where} serves {endpoint.model!r}"
