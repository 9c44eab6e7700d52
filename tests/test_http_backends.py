"""The two HTTP stacks under the `openai` client (ROUTEYARD_HTTP_BACKEND: the SDK's aiohttp transport, the default,
or httpx's): answers come back alike, and every request is counted, with those that may have been billed (sent,
never answered) told apart from those that never reached a server (worker/llm_client.py's Tally, which the spend
report's "unanswered requests, at most $X" rests on)."""

from __future__ import annotations

import asyncio
import socket

import pytest
from conftest import TEST_KEY, WEAK
from pydantic import SecretStr

from routeyard.settings import Endpoint
from worker.llm_client import CallResult, ModelClient, transport_for

BACKENDS = ["aiohttp", "httpx"]
BODY = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 20}


def client_for(base_url: str, backend: str, retries: int = 0) -> ModelClient:
    endpoint = Endpoint(tier="weak", base_url=base_url, model=WEAK, api_key=SecretStr(TEST_KEY))
    return ModelClient(endpoint, max_retries=retries, timeout_s=5.0, secrets=[TEST_KEY], http_backend=backend)


async def complete_and_close(client: ModelClient, body: dict) -> CallResult:
    try:
        return await client.complete(body)
    finally:
        await client.aclose()


def test_the_default_backend_is_aiohttps_transport():
    import ssl

    from openai._vendor.httpx_aiohttp.transport import AiohttpTransport

    tls = ssl.create_default_context()
    assert isinstance(transport_for("aiohttp", tls), AiohttpTransport)
    assert not isinstance(transport_for("httpx", tls), AiohttpTransport)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_answer_and_its_usage_come_back_through_either_backend(loopback, backend):
    result = asyncio.run(complete_and_close(client_for(loopback.base_url, backend), BODY))
    assert result.ok and result.answer and result.prompt_tokens > 0 and result.completion_tokens > 0
    assert result.response["status_code"] == 200 and result.response["request_id"].startswith("req_")
    assert (result.attempts, result.unanswered) == (1, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_error_answer_is_kept_as_the_endpoint_sent_it(loopback, backend):
    endpoint = Endpoint(tier="weak", base_url=loopback.base_url, model=WEAK, api_key=SecretStr("wrong-key"))
    client = ModelClient(endpoint, max_retries=0, timeout_s=5.0, secrets=["wrong-key"], http_backend=backend)
    result = asyncio.run(complete_and_close(client, BODY))
    assert not result.ok and result.status_code == 401 and result.response["status_code"] == 401
    assert (result.attempts, result.unanswered) == (1, 0)  # answered: a refusal bills nothing


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_request_the_server_dropped_counts_as_unanswered_and_a_refused_connection_does_not(backend):
    """A server that reads the request and closes the connection without answering may have run (and billed)
    it: each attempt counts as unanswered. A port nobody listens on never received one: attempts, none
    unanswered. (aiohttp's transport reports both as httpx.ConnectTimeout; the Tally must tell them apart.)"""

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length"))
        await reader.readexactly(length)
        writer.close()  # the whole request arrived: it may have been run

    async def main() -> tuple[CallResult, CallResult]:
        server = await asyncio.start_server(drop, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
            s.bind(("127.0.0.1", 0))
            refused_port = s.getsockname()[1]
        try:
            dropped = await complete_and_close(client_for(f"http://127.0.0.1:{port}/v1", backend, retries=1), BODY)
            refused = await complete_and_close(client_for(f"http://127.0.0.1:{refused_port}/v1", backend, retries=1),
                                               BODY)
        finally:
            server.close()
            await server.wait_closed()
        return dropped, refused

    dropped, refused = asyncio.run(main())
    assert not dropped.ok and (dropped.attempts, dropped.unanswered) == (2, 2)
    assert not refused.ok and (refused.attempts, refused.unanswered) == (2, 0)
    # named as what it is, on either stack (aiohttp's transport reports it as a timeout)
    assert "timed out" not in (refused.error or "") and "onnect" in (refused.error or ""), refused.error
