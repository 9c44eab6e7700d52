"""The OpenAI Files and Batches API, driven by the real openai SDK against the app (TestClient as its HTTP
client) and the loopback model server: code written for OpenAI's Batch API runs unchanged, and every line it
reads back parses with the SDK's own types."""

from __future__ import annotations

import asyncio
import io
import json
from concurrent.futures import Executor, Future
from datetime import timedelta

import openai
import pytest
from fastapi.testclient import TestClient
from jobs_helpers import server_stats
from openai.types import Batch, FileDeleted, FileObject
from openai.types.chat import ChatCompletion
from pydantic import BaseModel, ConfigDict
from sqlalchemy import select, update

from db.models import Batch as BatchRow
from db.models import Item, utcnow
from db.session import open_database
from jobs.api import create_app
from jobs.services.results import export_results
from jobs.services.tenants import create_tenant
from routeyard.states import ItemStatus
from routeyard.testing.inline import InlineExecutor
from worker.embedded import run_embedded
from worker.llm_client import ModelClient, read_completion

CHAT = "/v1/chat/completions"
QUERY = {"type": "object", "properties": {"query": {"type": "string"}}}
TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "look a word up", "parameters": QUERY}}]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LineResponse(Strict):
    status_code: int
    request_id: str | None
    body: dict


class LineError(Strict):
    code: str
    message: str


class OutputLine(Strict):
    """One line of an OpenAI Batch API output or error file (the SDK has no type for it)."""

    id: str
    custom_id: str | None
    response: LineResponse | None
    error: LineError | None


class Parked(Executor):
    """Takes a job and never runs it: the batch stays in progress until the test says otherwise."""

    def submit(self, fn, /, *args, **kwargs):
        return Future()


def line(custom_id: str, content: str, url: str = CHAT, **body) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url,
                       "body": {"model": "gpt-4o", "messages": [{"role": "user", "content": content}], **body}})


@pytest.fixture
def world(settings):
    """(client of tenant A, client of tenant B, the TestClient, the session factory, settings)."""
    settings = settings.model_copy(update={"default_router": "random", "max_retries": 0})
    sf = open_database(settings.resolved_database_url)
    _, key_a = create_tenant(sf, "tenant-a")
    _, key_b = create_tenant(sf, "tenant-b")

    def start(executor):
        http = TestClient(create_app(settings, executor=executor))
        http.__enter__()
        opened.append(http)
        return (openai.OpenAI(base_url="http://testserver/v1", api_key=key_a, http_client=http, max_retries=0),
                openai.OpenAI(base_url="http://testserver/v1", api_key=key_b, http_client=http, max_retries=0), http)

    opened: list[TestClient] = []
    a, b, http = start(InlineExecutor())
    yield {"a": a, "b": b, "http": http, "sf": sf, "settings": settings, "start": start}
    for client in opened:
        client.__exit__(None, None, None)


def upload(client: openai.OpenAI, lines: list[str], name: str = "batch.jsonl") -> FileObject:
    return client.files.create(file=(name, io.BytesIO(("\n".join(lines) + "\n").encode())), purpose="batch")


def parse_lines(data: bytes) -> list[OutputLine]:
    return [OutputLine.model_validate_json(raw) for raw in data.decode().splitlines()]


MIXED = [
    line("plain-1", "What is 2 + 2?", max_tokens=50),
    line("tool-1", "Look up the word 'batch'.", tools=TOOLS, tool_choice="required"),
    line("vllm-1", "Name a prime number.", top_k=40, repetition_penalty=1.1,
         guided_json={"type": "object", "properties": {"n": {"type": "integer"}}}),
    line("stream-1", "Stream this please.", stream=True),
    json.dumps({"custom_id": "embed-1", "method": "POST", "url": "/v1/embeddings",
                "body": {"model": "text-embedding-3-small", "input": "hello"}}),
    '{"custom_id": "broken-1", "method": ',
    line("fail-1", "ROUTEYARD_ALWAYS_FAIL: the endpoint answers 500"),
    line("plain-1", "The same custom_id again."),
    line("plain-2", "Write a haiku about queues."),
]


def test_code_written_for_openai_runs_a_batch_and_reads_output_as_openai_writes_it(world, loopback):
    client, http = world["a"], world["http"]
    source = upload(client, MIXED)
    assert isinstance(source, FileObject) and source.purpose == "batch" and source.filename == "batch.jsonl"
    assert source.bytes == len(("\n".join(MIXED) + "\n").encode()) and source.status == "processed"

    created = client.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h",
                                    metadata={"strong_fraction": "0.5", "router": "random", "tag": "nightly",
                                              "owner": "data-team"})
    assert isinstance(created, Batch) and created.input_file_id == source.id
    batch = client.batches.retrieve(created.id)
    raw = http.get(f"/v1/batches/{batch.id}", headers={"Authorization": f"Bearer {client.api_key}"}).json()
    assert set(Batch.model_fields) <= set(raw)  # every field of OpenAI's object, nulls included
    assert batch.status == "completed" and batch.endpoint == CHAT and batch.completion_window == "24h"
    assert batch.metadata == {"strong_fraction": "0.5", "router": "random", "tag": "nightly", "owner": "data-team"}
    assert batch.request_counts.model_dump() == {"total": 9, "completed": 4, "failed": 5}
    assert batch.created_at <= batch.in_progress_at <= batch.finalizing_at <= batch.completed_at
    assert batch.errors is None and batch.usage.input_tokens > 0 and batch.usage.total_tokens > batch.usage.input_tokens

    output = client.files.content(batch.output_file_id).content
    assert client.files.content(batch.output_file_id).content == output  # stored: the same bytes every time
    assert client.files.retrieve(batch.output_file_id).purpose == "batch_output"
    lines = parse_lines(output)
    assert [ln.custom_id for ln in lines] == ["plain-1", "tool-1", "vllm-1", "plain-2"]
    for ln in lines:
        completion = ChatCompletion.model_validate(ln.response.body)
        assert ln.error is None and ln.response.status_code == 200 and ln.id.startswith("batch_req_")
        assert ln.response.request_id == "req_" + completion.id.removeprefix("chatcmpl-")  # the x-request-id header
    tool = json.loads(output.decode().splitlines()[1])["response"]["body"]["choices"][0]["message"]
    assert "content" in tool and tool["content"] is None and tool["tool_calls"][0]["function"]["name"] == "lookup"
    assert len({ln.id for ln in lines}) == 4

    errors = parse_lines(client.files.content(batch.error_file_id).content)
    by_id = {ln.custom_id: ln for ln in errors}
    assert [ln.custom_id for ln in errors] == ["stream-1", "embed-1", None, "fail-1", "plain-1"]  # input order
    assert by_id["stream-1"].error.code == "unsupported_parameter" and "line 4" in by_id["stream-1"].error.message
    assert "stream" in by_id["stream-1"].error.message
    assert by_id["embed-1"].error.code == "invalid_url" and "/v1/embeddings" in by_id["embed-1"].error.message
    assert by_id[None].error.code == "invalid_json_line" and by_id[None].error.message.startswith("line 6: ")
    assert by_id["plain-1"].error.code == "duplicate_custom_id"
    failed = by_id["fail-1"]  # answered with an error status: the response as returned, error null
    assert failed.error is None and failed.response.status_code == 500
    assert failed.response.request_id.startswith("req_") and "error" in failed.response.body

    # unknown parameters reached the endpoint as sent; the model is the routed one
    calls = server_stats(loopback.base_url)["calls"]
    sent = next(c["last_body"] for c in calls if c["prompt"] == "Name a prime number.")
    assert sent["top_k"] == 40 and sent["repetition_penalty"] == 1.1 and sent["guided_json"]["type"] == "object"
    assert sent["model"] in ("gpt-4-1106-preview", "mixtral-8x7b-instruct")
    assert all(c["prompt"] != "Stream this please." for c in calls)

    # a batch is a job: status, results, spend and feedback take its id; the export is the same writer
    auth = {"Authorization": f"Bearer {client.api_key}"}
    job = http.get(f"/v1/jobs/{batch.id}", headers=auth).json()
    assert job["status"] == "completed" and job["tag"] == "nightly" and job["router"] == "random"
    assert job["strong_fraction"] == 0.5 and job["n_rejected"] == 4
    assert http.get(f"/v1/jobs/{batch.id}/results/export", headers=auth, params={"format": "openai"}).content == output
    with world["sf"]() as session:
        assert "".join(export_results(session, batch.id, "openai-errors")).encode() == \
            client.files.content(batch.error_file_id).content
    assert http.get(f"/v1/jobs/{batch.id}/spend", headers=auth).json()["calls"] == 4  # answered calls
    feedback = http.post(f"/v1/jobs/{batch.id}/feedback", headers=auth,
                         json={"custom_id": "plain-2", "kind": "thumbs", "value": 1})
    assert feedback.status_code == 201


def test_a_file_with_no_valid_line_makes_a_failed_batch_that_names_each_line(world):
    client, http = world["a"], world["http"]
    bad = [line("a", "x", url="/v1/completions"), "[1, 2]", line("c", "y", stream=True),
           json.dumps({"custom_id": "d", "method": "POST", "url": CHAT, "body": {"messages": []}})]
    batch = client.batches.create(input_file_id=upload(client, bad).id, endpoint=CHAT, completion_window="24h",
                                  metadata={"note": "all wrong"})
    assert batch.status == "failed" and batch.failed_at and batch.output_file_id is None
    assert batch.error_file_id is None and batch.request_counts.total == 0
    errors = [(e.line, e.code, e.param) for e in batch.errors.data]
    assert errors == [(1, "invalid_url", "url"), (2, "invalid_json_line", None),
                      (3, "unsupported_parameter", "body.stream"), (4, "invalid_request", "body.messages")]
    assert client.batches.retrieve(batch.id).status == "failed"
    assert http.get("/v1/jobs", headers={"Authorization": f"Bearer {client.api_key}"}).json() == []  # no job
    empty = client.files.create(file=("empty.jsonl", io.BytesIO(b"")), purpose="batch")
    failed = client.batches.create(input_file_id=empty.id, endpoint=CHAT, completion_window="24h")
    assert failed.status == "failed" and failed.errors.data[0].code == "empty_file"


def test_another_tenant_sees_no_file_and_no_batch(world):
    a, b = world["a"], world["b"]
    source = upload(a, [line("x", "hello")])
    batch = a.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h")
    for call in (lambda: b.files.retrieve(source.id), lambda: b.files.content(source.id),
                 lambda: b.files.delete(source.id), lambda: b.batches.retrieve(batch.id),
                 lambda: b.batches.cancel(batch.id),
                 lambda: b.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h")):
        with pytest.raises(openai.NotFoundError):
            call()
    assert b.files.list().data == [] and b.batches.list().data == []
    assert [f.id for f in a.files.list(purpose="batch")] == [source.id]
    auth = {"Authorization": f"Bearer {b.api_key}"}
    assert world["http"].get(f"/v1/jobs/{batch.id}", headers=auth).status_code == 404
    bad_key = openai.OpenAI(base_url="http://testserver/v1", api_key="ry_wrong", http_client=world["http"])
    with pytest.raises(openai.AuthenticationError):
        bad_key.files.list()


def test_files_list_pages_with_a_cursor_and_delete_validates_and_limits(world, monkeypatch):
    client = world["a"]
    made = [upload(client, [line(f"r{i}", f"prompt {i}")], name=f"f{i}.jsonl").id for i in range(3)]
    page = client.files.list(limit=2)
    assert [f.id for f in page.data] == made[::-1][:2] and page.has_more
    assert [f.id for f in client.files.list(limit=2)] == made[::-1]  # the SDK follows the cursor
    assert [f.id for f in client.files.list(order="asc", limit=1)] == made
    deleted = client.files.delete(made[0])
    assert isinstance(deleted, FileDeleted) and deleted.deleted and deleted.id == made[0]
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(made[0])
    with pytest.raises(openai.BadRequestError, match="purpose must be 'batch'") as bad:
        client.files.create(file=("x.jsonl", io.BytesIO(b"{}\n")), purpose="fine-tune")
    assert bad.value.code == "invalid_value" and bad.value.type == "invalid_request_error"
    expiring = client.files.create(file=("e.jsonl", io.BytesIO(b"{}\n")), purpose="batch",
                                   expires_after={"anchor": "created_at", "seconds": 3600})
    assert expiring.expires_at == expiring.created_at + 3600
    small = world["settings"].model_copy(update={"max_upload_bytes": 100})  # ROUTEYARD_MAX_UPLOAD_BYTES
    with TestClient(create_app(small, executor=InlineExecutor())) as http:
        limited = openai.OpenAI(base_url="http://testserver/v1", api_key=client.api_key, http_client=http,
                                max_retries=0)
        with pytest.raises(openai.APIStatusError) as big:
            limited.files.create(file=("big.jsonl", io.BytesIO(b"x" * 101)), purpose="batch")
    assert big.value.status_code == 413 and "100 bytes" in big.value.message


def test_batches_list_pages_newest_first(world):
    client = world["a"]
    source = upload(client, [line("x", "hello")])
    made = [client.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h").id
            for _ in range(3)]
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == made[::-1][:2] and first.has_more
    assert [b.id for b in client.batches.list(limit=2)] == made[::-1]
    assert {b.status for b in client.batches.list()} == {"completed"}


def test_a_retried_create_with_the_same_idempotency_key_is_the_same_batch_and_outputs_can_expire(world):
    client = world["a"]
    source = upload(client, [line("x", "hello")])
    request = {"input_file_id": source.id, "endpoint": CHAT, "completion_window": "24h",
               "output_expires_after": {"anchor": "created_at", "seconds": 7200},
               "extra_headers": {"Idempotency-Key": "nightly-1"}}
    first, again = client.batches.create(**request), client.batches.create(**request)
    assert again.id == first.id and len(client.batches.list().data) == 1
    output = client.files.retrieve(first.output_file_id)
    assert output.expires_at == output.created_at + 7200


def test_bad_batch_requests_answer_400_naming_what_is_wrong(world):
    client = world["a"]
    source = upload(client, [line("x", "hello")])
    cases = [({"endpoint": "/v1/embeddings"}, "is not routed"), ({"completion_window": "48h"}, "24h"),
             ({"metadata": {"strong_fraction": "lots"}}, "metadata['strong_fraction']"),
             ({"metadata": {"strong_fraction": "0.2", "budget_usd": "5"}}, "give one of"),
             ({"metadata": {"shadow": "2"}}, "metadata['shadow']")]
    for change, message in cases:
        request = {"input_file_id": source.id, "endpoint": CHAT, "completion_window": "24h", **change}
        with pytest.raises(openai.BadRequestError, match=message.replace("[", r"\[").replace("]", r"\]")):
            client.batches.create(**request)
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-nope", endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.BadRequestError) as missing:
        client.post("/batches", body={"endpoint": CHAT}, cast_to=Batch)
    assert missing.value.param == "input_file_id"


def test_cancel_stops_what_was_not_sent_and_waits_for_calls_in_flight(world):
    a, _, _ = world["start"](Parked())
    sf = world["sf"]
    source = upload(a, [line(f"r{i}", f"prompt {i}") for i in range(4)] + ["{bad"])
    batch = a.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h")
    assert batch.status == "in_progress" and batch.request_counts.total == 5
    cancelled = a.batches.cancel(batch.id)
    assert cancelled.status == "cancelled" and cancelled.cancelling_at and cancelled.cancelled_at
    assert cancelled.output_file_id is None
    errors = parse_lines(a.files.content(cancelled.error_file_id).content)
    assert [(e.custom_id, e.error.code) for e in errors] == [
        ("r0", "batch_cancelled"), ("r1", "batch_cancelled"), ("r2", "batch_cancelled"), ("r3", "batch_cancelled"),
        (None, "invalid_json_line")]
    assert a.batches.cancel(batch.id).status == "cancelled"  # again: nothing changes

    second = a.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h")
    with sf() as session:  # one call is in flight when the cancel comes
        first_item = min(session.scalars(select(Item.id).where(Item.job_id == second.id)))
        session.execute(update(Item).where(Item.id == first_item)
                        .values(status=ItemStatus.IN_FLIGHT, started_at=utcnow(), tier="weak"))
        session.commit()
    assert a.batches.cancel(second.id).status == "cancelling"
    assert a.batches.retrieve(second.id).status == "cancelling"
    body = {"id": "chatcmpl-late", "object": "chat.completion", "created": 1, "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "late"}, "finish_reason": "stop"}]}
    with sf() as session:  # the call finishes, and counts
        session.execute(update(Item).where(Item.id == first_item).values(
            status=ItemStatus.SUCCEEDED, status_code=200, prompt_tokens=3, completion_tokens=1,
            response={"status_code": 200, "request_id": "req_late", "body": body}))
        session.commit()
    done = a.batches.retrieve(second.id)
    assert done.status == "cancelled" and done.request_counts.completed == 1
    [kept] = parse_lines(a.files.content(done.output_file_id).content)
    assert kept.custom_id == "r0" and kept.response.request_id == "req_late" and kept.response.body == body

    finished = world["a"].batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h")
    with pytest.raises(openai.ConflictError, match="completed"):
        world["a"].batches.cancel(finished.id)


def test_output_files_are_written_once_a_writer_that_died_is_taken_over_and_a_rerun_writes_new_ones(world):
    a, _, _ = world["start"](Parked())
    sf, settings = world["sf"], world["settings"]
    source = upload(a, [line("x", "hello"), line("y", "ROUTEYARD_ALWAYS_FAIL world")])
    batch = a.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h")
    run_embedded(sf, settings, batch.id)  # the job ends elsewhere (a worker)
    with sf() as session:  # another reader claimed the writing a moment ago
        session.execute(update(BatchRow).where(BatchRow.id == batch.id).values(finalizing_at=utcnow()))
        session.commit()
    seen = a.batches.retrieve(batch.id)
    assert seen.status == "finalizing" and seen.output_file_id is None and seen.finalizing_at
    with sf() as session:  # ... and died: its claim runs out
        session.execute(update(BatchRow).where(BatchRow.id == batch.id)
                        .values(finalizing_at=utcnow() - timedelta(hours=1)))
        session.commit()
    done = a.batches.retrieve(batch.id)
    assert done.status == "completed" and done.output_file_id and done.error_file_id
    again = a.batches.retrieve(batch.id)
    assert (again.output_file_id, again.error_file_id, again.completed_at) == \
        (done.output_file_id, done.error_file_id, done.completed_at)
    assert [f.purpose for f in a.files.list()].count("batch_output") == 2

    run_embedded(sf, settings, batch.id, retry_failed=True)  # `resume --retry-failed`: it fails again
    rerun = a.batches.retrieve(batch.id)
    assert rerun.status == "completed" and rerun.error_file_id not in (None, done.error_file_id)
    assert [ln.custom_id for ln in parse_lines(a.files.content(rerun.error_file_id).content)] == ["y"]
    assert a.files.content(done.error_file_id).content  # the first files stay readable


def test_unknown_parameters_pass_through_and_a_stored_stream_line_fails_alone(settings, loopback):
    client = ModelClient(settings.endpoint("weak"), max_retries=0, timeout_s=5, secrets=[])

    async def calls():
        try:
            return await asyncio.gather(
                client.complete({"messages": [{"role": "user", "content": "extra"}], "top_k": 5, "min_p": 0.1}),
                client.complete({"messages": [{"role": "user", "content": "streamed"}], "stream": True}))
        finally:
            await client.aclose()

    ok, streamed = asyncio.run(calls())
    assert ok.ok and ok.response["status_code"] == 200 and ok.response["request_id"].startswith("req_")
    sent = next(c["last_body"] for c in server_stats(loopback.base_url)["calls"] if c["prompt"] == "extra")
    assert sent["top_k"] == 5 and sent["min_p"] == 0.1
    assert not streamed.ok and "streaming is not supported" in streamed.error and streamed.response is None


@pytest.mark.parametrize(("body", "read"), [
    ({"choices": [{"message": {"content": "hi"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
     ("hi", 3, 1)),
    ({"choices": [{"message": {"content": None, "tool_calls": [{"id": "t"}]}}]}, (None, 0, 0)),  # no usage sent
    ({"choices": [], "usage": {"prompt_tokens": True, "completion_tokens": -4}}, (None, 0, 0)),
    ({"choices": ["text"], "usage": None}, (None, 0, 0)),
])
def test_a_completion_is_read_from_its_json_whatever_a_server_leaves_out(body, read):
    """Calls post the body and read the JSON the Batch output stores; a server's odd answer reads as no text and
    no tokens, never as a crash of the batch."""
    assert read_completion(body) == read


def test_a_bad_routing_option_is_a_400_even_when_the_file_is_bad_too(world):
    client = world["a"]
    source = upload(client, ["{bad"])
    with pytest.raises(openai.BadRequestError, match="unknown router"):
        client.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h",
                              metadata={"router": "no-such-router"})
    assert client.batches.list().data == []
