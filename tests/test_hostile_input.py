"""Input that used to be lost or crash (issue 14, point 6), and size limits (point 7): each bad line is one
per-line error naming the line and field while the rest is stored; an unauthenticated upload is refused before
its body is read; a body over the limit is a 413; a line over the limit is refused in every input form."""

from __future__ import annotations

import asyncio
import io
import json
import threading

import httpx
from fastapi.testclient import TestClient
from jobs_helpers import items, submit, write_batch
from sqlalchemy import func, select

from db.models import Job
from db.session import open_database
from jobs.api import create_app
from jobs.services.input_formats import ParsedItem, Rejection, parse_stream
from jobs.services.submit import JobOptions, submit_job
from jobs.services.tenants import create_tenant
from routeyard.errors import Conflict


def parse(data: bytes, fmt: str = "jsonl", max_line_bytes: int = 4096) -> list[ParsedItem | Rejection]:
    return list(parse_stream(io.BufferedReader(io.BytesIO(data)), fmt, max_line_bytes))  # type: ignore[arg-type]


def batch_line(custom_id: str, content: str, **body: object) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"messages": [{"role": "user", "content": content}], **body}})


def rejected(entries) -> dict[int, str]:
    return {e.line_no: e.reason for e in entries if isinstance(e, Rejection)}


def accepted(entries) -> list[str]:
    return [e.custom_id for e in entries if isinstance(e, ParsedItem)]


def test_a_byte_order_mark_is_skipped_in_jsonl_and_in_a_csv_from_excel():
    jsonl = ("\ufeff" + batch_line("a", "first") + "\n" + batch_line("b", "second") + "\n").encode()
    assert accepted(parse(jsonl)) == ["a", "b"] and not rejected(parse(jsonl))
    excel = "\ufeffid,prompt\r\n1,hello\r\n2,\"two\r\nlines\"\r\n".encode()
    entries = parse(excel, "csv")
    assert accepted(entries) == ["1", "2"] and not rejected(entries)
    assert [e.prompt for e in entries if isinstance(e, ParsedItem)] == ["hello", "two\r\nlines"]


def test_invalid_utf8_in_a_csv_is_an_error_naming_its_line():
    data = b"id,prompt\n1,fine\n2,caf\xe9 latin-1\n3,also fine\n"
    entries = parse(data, "csv")
    assert accepted(entries) == ["1", "3"]
    assert list(rejected(entries)) == [3] and "not UTF-8" in rejected(entries)[3]
    assert all("\ufffd" not in e.prompt for e in entries if isinstance(e, ParsedItem))


def test_nul_characters_and_nan_are_refused_per_line_naming_the_field():
    lines = [batch_line("ok", "fine"), batch_line("nul", "bad\u0000text"),
             '{"custom_id": "nan", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": '
             '[{"role": "user", "content": "x"}], "temperature": NaN}}',
             '{"id": "inf", "prompt": "y", "max_tokens": Infinity}', '{"id": "k\\u0000", "prompt": "z"}',
             batch_line("ok2", "also fine")]
    entries = parse(("\n".join(lines) + "\n").encode())
    assert accepted(entries) == ["ok", "ok2"]
    why = rejected(entries)
    assert "field 'body.messages.0.content'" in why[2] and "NUL" in why[2]
    assert "field 'body.temperature': NaN is not a JSON number" in why[3]
    assert "field 'max_tokens': Infinity" in why[4]
    assert "field 'id'" in why[5] and "NUL" in why[5]
    csv_entries = parse(b"id,prompt\n1,fine\n2,nul\x00here\n3,fine too\n", "csv")
    assert accepted(csv_entries) == ["1", "3"] and list(rejected(csv_entries)) == [3]


def test_a_line_over_the_limit_is_refused_in_every_form_without_losing_the_rest():
    long = "x" * 5000
    plain = "\n".join([json.dumps({"id": "a", "prompt": "short"}), json.dumps({"id": "b", "prompt": long}),
                       json.dumps({"id": "c", "prompt": "short"})]) + "\n"
    batch = "\n".join([batch_line("a", "short"), batch_line("b", long), batch_line("c", "short")]) + "\n"
    csv_text = f"id,prompt\na,short\nb,{long}\nc,short\n"
    for data, fmt in ((plain, "jsonl"), (batch, "jsonl"), (csv_text, "csv")):
        entries = parse(data.encode(), fmt)
        assert accepted(entries) == ["a", "c"], fmt
        assert list(rejected(entries)) == [2 if fmt == "jsonl" else 3], fmt
        assert "longer than 4,096 bytes" in next(iter(rejected(entries).values()))


def test_a_nul_line_is_rejected_and_the_rest_stored_on_the_database(settings, tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text("\n".join([batch_line("a", "fine"), batch_line("b", "nul\u0000inside"),
                               batch_line("c", "fine too")]) + "\n")
    sf, result = submit(settings, path)
    assert result.n_items == 2 and [n for n, _ in result.rejected] == [2]
    assert [i.custom_id for i in items(sf, result.job_id)] == ["a", "c"]


def test_concurrent_submits_with_one_key_store_one_job(postgres_url, tmp_path, loopback):
    from conftest import make_settings

    settings = make_settings(tmp_path / "home", postgres_url, loopback)
    sf = open_database(postgres_url)
    path = write_batch(tmp_path / "b.jsonl", [f"prompt {i}" for i in range(300)])
    start = threading.Barrier(5)
    outcomes: list[object] = []

    def one() -> None:
        start.wait()
        try:
            with path.open("rb") as f:
                outcomes.append(submit_job(sf, settings, f, "jsonl", JobOptions(router="random",
                                                                                idempotency_key="same")))
        except Exception as exc:  # every error is recorded: the test says which
            outcomes.append(exc)

    threads = [threading.Thread(target=one) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with sf() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1
        job_id = session.scalar(select(Job.id))
    assert all(not isinstance(o, Exception) or isinstance(o, Conflict) for o in outcomes), outcomes
    results = [o for o in outcomes if not isinstance(o, Exception)]
    assert {r.job_id for r in results} == {job_id}  # type: ignore[attr-defined]
    assert sum(r.created for r in results) == 1  # type: ignore[attr-defined]


def test_the_api_refuses_nan_and_infinite_numbers(settings, tmp_path):
    sf = open_database(settings.resolved_database_url)
    _, key = create_tenant(sf, "acme")
    auth = {"Authorization": f"Bearer {key}"}
    batch = write_batch(tmp_path / "b.jsonl", ["one", "two"])
    with TestClient(create_app(settings)) as client:
        for field, value in (("budget_usd", "inf"), ("budget_usd", "nan"), ("strong_fraction", "nan"),
                             ("shadow", "nan")):
            r = client.post("/v1/jobs", headers=auth, files={"file": ("b.jsonl", batch.read_bytes())},
                            data={"router": "random", field: value})
            assert r.status_code == 422 and field in r.text, (field, value, r.text)
        r = client.post("/v1/jobs", headers=auth, files={"file": ("b.jsonl", batch.read_bytes())},
                        data={"router": "random", "strong_fraction": "0"})
        job_id = r.json()["job_id"]
        r = client.post(f"/v1/jobs/{job_id}/feedback", headers={**auth, "Content-Type": "application/json"},
                        content=b'{"custom_id": "req-0", "kind": "rating", "value": NaN}')
        assert r.status_code == 422 and "value" in r.text, r.text
        file_id = client.post("/v1/files", headers=auth, files={"file": ("b.jsonl", batch.read_bytes())},
                              data={"purpose": "batch"}).json()["id"]
        r = client.post("/v1/batches", headers=auth, json={
            "input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h",
            "metadata": {"budget_usd": "inf"}})
        assert r.status_code == 400 and "budget_usd" in r.text, r.text


class Body:
    """A streamed request body that records how much of it the server pulled."""

    def __init__(self, data: bytes, chunk: int = 1 << 20) -> None:
        self.data, self.chunk, self.pulled = data, chunk, 0

    async def __aiter__(self):
        for start in range(0, len(self.data), self.chunk):
            piece = self.data[start : start + self.chunk]
            self.pulled += len(piece)
            yield piece


def multipart(payload: bytes, name: str = "b.jsonl") -> tuple[bytes, str]:
    boundary = "routeyardtestboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + payload + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def post(app, path: str, body: Body, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        return await client.post(path, content=body, headers=headers)


def test_an_unauthenticated_upload_is_refused_before_its_body_is_read(settings):
    sf = open_database(settings.resolved_database_url)
    create_tenant(sf, "acme")
    app = create_app(settings)
    data, kind = multipart(b'{"prompt": "x"}\n' * 400_000)  # 6.4 MB
    for path in ("/v1/jobs", "/v1/files"):
        for auth in ({}, {"Authorization": "Bearer ry_not-a-key"}):
            body = Body(data)
            r = asyncio.run(post(app, path, body, {"Content-Type": kind, **auth}))
            assert r.status_code == 401, (path, r.text)
            assert body.pulled == 0, f"{path}: {body.pulled:,} bytes read before the 401"


def test_an_upload_over_the_limit_is_a_413_read_no_further_than_the_limit(settings):
    settings = settings.model_copy(update={"max_upload_bytes": 2 * 1024 * 1024})
    sf = open_database(settings.resolved_database_url)
    _, key = create_tenant(sf, "acme")
    app = create_app(settings)
    data, kind = multipart(b'{"prompt": "x"}\n' * 600_000)  # 9.6 MB
    for path in ("/v1/jobs", "/v1/files"):
        body = Body(data)  # streamed: no Content-Length, so the limit is counted as it is read
        r = asyncio.run(post(app, path, body, {"Content-Type": kind, "Authorization": f"Bearer {key}"}))
        assert r.status_code == 413 and "ROUTEYARD_MAX_UPLOAD_BYTES" in r.text, (path, r.text)
        assert body.pulled <= 4 * 1024 * 1024, body.pulled  # the limit, the form's allowance and one chunk
    with TestClient(app) as client:  # with a Content-Length the answer comes at once
        r = client.post("/v1/jobs", headers={"Authorization": f"Bearer {key}"},
                        files={"file": ("b.jsonl", data)})
        assert r.status_code == 413
        with sf() as session:
            assert session.scalar(select(func.count()).select_from(Job)) == 0


def test_the_api_refuses_a_long_line_and_stores_the_rest(settings, tmp_path):
    settings = settings.model_copy(update={"max_line_bytes": 2048})
    sf = open_database(settings.resolved_database_url)
    _, key = create_tenant(sf, "acme")
    lines = [batch_line("a", "short"), batch_line("b", "y" * 3000), json.dumps({"id": "c", "prompt": "z" * 3000}),
             batch_line("d", "short")]
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/jobs", headers={"Authorization": f"Bearer {key}"},
                        files={"file": ("b.jsonl", ("\n".join(lines) + "\n").encode())}, data={"router": "random"})
        assert r.status_code == 201, r.text
        assert r.json()["n_items"] == 2 and [x["line"] for x in r.json()["rejected"]] == [2, 3]
        assert "longer than 2,048 bytes" in r.json()["rejected"][0]["reason"]
