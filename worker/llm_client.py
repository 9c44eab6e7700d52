"""Calls to a tier's model through the real `openai` client (any OpenAI-compatible endpoint).

Backoff is the client's own: it retries 408/409/429/5xx, connection errors and timeouts with exponential
backoff and jitter, honouring Retry-After; `max_retries` bounds it. What still fails is returned, not raised,
so one bad prompt never sinks a batch.

A request body passes through as the endpoint expects it, byte for byte in meaning: it is posted with the
client's own `post` (the SDK's documented way to reach any endpoint, with its retries, auth and timeouts), so
parameters the SDK does not know (top_k, repetition_penalty, guided_json, ...: vLLM, Ollama and gateways take
them) go as they are. What comes back is kept as the endpoint sent it, as the OpenAI Batch API's output file
needs it: `{"status_code", "request_id" (the x-request-id header), "body" (the JSON as returned, nulls kept)}`,
for answers and for error responses alike.

Why `post` and not `chat.completions.create`: a batch body is already wire JSON, so create()'s keyword
transform and its typed response model are work for nothing, and they were a third of a call's CPU time
(benchmarks/throughput.py measures both). The answer and usage are read from the JSON that is stored anyway.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import ssl
import sys
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Protocol

import httpx2 as httpx
import openai
from openai._constants import DEFAULT_CONNECTION_LIMITS

from routeyard.redact import redact, safe_url
from routeyard.settings import Endpoint, HttpBackend


class HttpResponse(Protocol):
    """What exchange() reads of the SDK's HTTP response (httpx's or httpx2's, by SDK version)."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Any: ...
    @property
    def text(self) -> str: ...
    def json(self) -> Any: ...


def exchange(response: HttpResponse) -> dict[str, Any]:
    """The HTTP response as the Batch API's output line carries it: status, request id, body as returned."""
    try:
        body: Any = response.json()
    except ValueError:
        body = {"error": {"message": response.text[:2000], "type": "invalid_response", "param": None, "code": None}}
    return {"status_code": response.status_code, "request_id": response.headers.get("x-request-id"), "body": body}


def read_completion(body: dict[str, Any]) -> tuple[str | None, int, int]:
    """(the first choice's text, prompt tokens, completion tokens) of a chat completion's JSON; missing parts
    (a tool call has no text, some servers send no usage) read as None or 0."""
    def part(value: Any) -> dict[str, Any]:
        return value if isinstance(value, dict) else {}

    choices = body.get("choices")
    message = part(part(choices[0] if isinstance(choices, list) and choices else None).get("message"))
    answer = message.get("content")
    usage = part(body.get("usage"))

    def tokens(key: str) -> int:
        value = usage.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    return (answer if isinstance(answer, str) else None), tokens("prompt_tokens"), tokens("completion_tokens")


def _scrub(value: Any, secrets: list[str]) -> Any:
    """An error response with every string redacted: gateways echo request headers (keys) in their errors."""
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {k: _scrub(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, secrets) for v in value]
    return value


@dataclass
class Tally:
    """One call's HTTP requests, counted by CountingTransport: every attempt the client made (its retries
    included), and those sent that got no answer (a read timeout, a connection cut after sending). A provider
    may have answered, and billed, each of those."""

    attempts: int = 0
    unanswered: int = 0


_TALLY: contextvars.ContextVar[Tally | None] = contextvars.ContextVar("routeyard_call_tally", default=None)


class CountingTransport(httpx.AsyncBaseTransport):
    """The client's transport (aiohttp's or httpx's own, `transport_for`), counting attempts into the calling
    task's Tally (the SDK retries above it)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        tally = _TALLY.get()
        if tally is not None:
            tally.attempts += 1
        try:
            return await self.inner.handle_async_request(request)
        except (httpx.TransportError, asyncio.CancelledError) as exc:
            if tally is not None and not never_sent(exc):
                tally.unanswered += 1
            raise

    async def aclose(self) -> None:
        await self.inner.aclose()


def never_sent(exc: BaseException) -> bool:
    """Whether a failed request never reached the provider, so nothing can have been billed: no connection was
    made. The aiohttp transport maps every aiohttp connection error to httpx.ConnectTimeout, a server that
    dropped the connection mid-answer included, so there aiohttp's own exception decides."""
    cause = exc.__cause__
    aiohttp = sys.modules.get("aiohttp")  # not imported: no aiohttp transport ran, so no aiohttp error
    if aiohttp is not None and isinstance(cause, aiohttp.ClientError):
        return isinstance(cause, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError))
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))


def transport_for(backend: HttpBackend, tls: ssl.SSLContext) -> httpx.AsyncBaseTransport:
    """The HTTP transport under a tier's client: the SDK's aiohttp transport (its DefaultAioHttpClient's), or
    httpx's where aiohttp is not installed or `ROUTEYARD_HTTP_BACKEND=httpx` asks for it."""
    if backend == "aiohttp":
        try:
            from openai._vendor.httpx_aiohttp.transport import AiohttpTransport
        except ImportError:  # openai[aiohttp] is a core dependency, but a hand-made environment may lack aiohttp
            pass
        else:
            return AiohttpTransport(verify=tls, limits=DEFAULT_CONNECTION_LIMITS)
    return httpx.AsyncHTTPTransport(limits=DEFAULT_CONNECTION_LIMITS, verify=tls)


@dataclass(frozen=True)
class CallResult:
    ok: bool
    status_code: int | None
    response: dict[str, Any] | None  # exchange(): {"status_code", "request_id", "body"}; None if nothing came back
    answer: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float
    error: str | None = None
    attempts: int = 1  # HTTP requests made, the client's retries included
    unanswered: int = 0  # of those, sent but never answered (timed out): perhaps billed by the provider


def tls_context() -> ssl.SSLContext:
    """The TLS context httpx builds by default (its CA bundle, SSL_CERT_FILE and SSL_CERT_DIR honoured)."""
    return httpx.create_ssl_context()


class ModelClient:
    def __init__(self, endpoint: Endpoint, *, max_retries: int, timeout_s: float, secrets: list[str],
                 tls: ssl.SSLContext | None = None, http_backend: HttpBackend = "aiohttp") -> None:
        """`tls`: a TLS context to share with the process's other clients (tls_context()); building one loads
        the CA bundle, 80 ms of CPU, which two tiers' clients paid twice at the start of every run."""
        self.endpoint = endpoint
        self.secrets = secrets
        # Each call's idempotency key. Left to itself the SDK makes one per call with uuid4(), 5% of a worker's CPU
        # here (urandom), and OpenAI's client does not even send it (no idempotency header); should a client send
        # it, a random prefix per client and a counter are as unique, and the SDK's retries reuse the call's key.
        prefix = f"routeyard-{uuid.uuid4().hex}"
        self._keys = (f"{prefix}-{n}" for n in itertools.count())
        key = endpoint.api_key.get_secret_value()
        if not key and endpoint.base_url:
            key = "EMPTY"  # local servers (vLLM, Ollama) take any key; OpenAI itself falls back to OPENAI_API_KEY
        self.client: openai.AsyncOpenAI | None = None
        self.setup_error: str | None = None
        try:
            transport = CountingTransport(transport_for(http_backend, tls or tls_context()))
            http = openai.DefaultAsyncHttpxClient(transport=transport)
            self.client = openai.AsyncOpenAI(base_url=endpoint.base_url, api_key=key or None,
                                             max_retries=max_retries, timeout=timeout_s, http_client=http)
        except openai.OpenAIError as exc:  # e.g. no key at all: every call fails with why, the process does not
            tier = endpoint.tier.upper()
            self.setup_error = redact(f"cannot call the {endpoint.tier} model: {exc} (set ROUTEYARD_{tier}_API_KEY, "
                                      f"or ROUTEYARD_{tier}_BASE_URL for a server that needs none)", secrets)

    @property
    def model(self) -> str:
        return self.endpoint.model

    async def complete(self, body: dict[str, Any]) -> CallResult:
        """One chat completion for `body` (an OpenAI request body without `model`), with how many HTTP requests
        it took and how many of those went unanswered."""
        tally = Tally()
        token = _TALLY.set(tally)
        try:
            result = await self._complete(body)
        finally:
            _TALLY.reset(token)
        return replace(result, attempts=max(tally.attempts, 1 if result.status_code else 0),
                       unanswered=tally.unanswered)

    async def _complete(self, body: dict[str, Any]) -> CallResult:
        start = time.perf_counter()
        if self.client is None:
            return self._failure(start, None, self.setup_error or "no client")
        if body.get("stream"):  # refused at submit; a job stored before that must not crash on it
            return self._failure(start, None, "streaming is not supported in a batch: remove \"stream\" or set it "
                                              "to false")
        try:
            http = await self.client.post("/chat/completions", body={**body, "model": self.model},
                                          cast_to=httpx.Response, options={"idempotency_key": next(self._keys)})
            response = exchange(http)
        except openai.APIStatusError as exc:
            return self._failure(start, exc.status_code, f"{type(exc).__name__}: {exc}",
                                 _scrub(exchange(exc.response), self.secrets))
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            return self._failure(start, None, self._connection_failure(exc))
        except (openai.OpenAIError, TypeError, ValueError) as exc:  # bad request parameters, client config
            return self._failure(start, None, f"{type(exc).__name__}: {exc}")
        latency_ms = (time.perf_counter() - start) * 1000
        completion = response["body"]
        if not isinstance(completion, dict) or ("error" in completion and "choices" not in completion):
            return self._failure(start, response["status_code"], "the endpoint's answer is not a chat completion: "
                                 f"{str(completion)[:300]}", _scrub(response, self.secrets))
        answer, prompt_tokens, completion_tokens = read_completion(completion)
        return CallResult(True, response["status_code"], response, answer, prompt_tokens, completion_tokens,
                          latency_ms)

    def _connection_failure(self, exc: openai.APIConnectionError) -> str:
        """What went wrong with the connection. aiohttp's transport reports a refused connection as a timeout
        ("Request timed out."), which sends a user looking for a slow server: its own error says what happened."""
        cause = exc.__cause__.__cause__ if exc.__cause__ is not None else None
        aiohttp = sys.modules.get("aiohttp")
        if aiohttp is not None and isinstance(cause, aiohttp.ClientConnectorError):
            where = safe_url(self.endpoint.base_url) or "api.openai.com"
            return f"APIConnectionError: cannot connect to {where}: {cause}"
        return f"{type(exc).__name__}: {exc}"

    def _failure(self, start: float, status: int | None, message: str,
                 response: dict[str, Any] | None = None) -> CallResult:
        return CallResult(False, status, response, None, 0, 0, (time.perf_counter() - start) * 1000,
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
