"""Text no database stores (a NUL character, a lone surrogate) and lines nested past what a parser recurses
used to crash a whole submit (CLI: internal error, API: 500): each is now a per-line rejection naming the line
and field, the rest stored, on SQLite and PostgreSQL; in a form field or JSON body a 422, in a path id a 404."""

from __future__ import annotations

import io
import json

from fastapi.testclient import TestClient
from jobs_helpers import items, submit
from pydantic import SecretStr

from db.rejections import rejected_lines
from db.session import open_database
from jobs.api import create_app
from jobs.services.input_formats import ParsedItem, Rejection, parse_stream
from jobs.services.input_lines import MAX_DEPTH
from jobs.services.submit import JobOptions, submit_job
from jobs.services.tenants import create_tenant

CHAT = {"method": "POST", "url": "/v1/chat/completions"}


def batch(custom_id: str, content: str, **body: object) -> str:
    return json.dumps({"custom_id": custom_id, **CHAT,
                       "body": {"messages": [{"role": "user", "content": content}], **body}})


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# Written as JSON text, as a user's file has them: json.dumps would escape nothing a reader sees.
HOSTILE = [
    (batch("ok1", "fine"), None),
    (batch("c3", "sur \\udfff").replace("\\\\", "\\"), "body.messages.0.content"),
    ('{"id": "s2\\ud800", "prompt": "ok"}', "id"),
    ('{"id": "s3", "prompt": "ok", "system": "sys \\udc00"}', "system"),
    ('{"id": "s4", "prompt": "ok", "k\\ud800ey": 1}', "k\\ud800ey"),
    (batch("c5", "ok", **{"foo\u0000": 1}), "body.foo\\u0000"),
    (batch("c6", "ok", **{"bar\udfff": 1}).replace("\\\\", "\\"), "body.bar\\udfff"),
    ('{"id": "d1", "prompt": "deep", "x": ' + nested(1100) + "}", "x"),
    ('{"id": "d2", "prompt": "deep", "y": ' + nested(MAX_DEPTH + 1) + "}", "y"),
    ('{"id": "ok2", "prompt": "fine", "z": ' + nested(MAX_DEPTH - 2) + "}", None),
]


def hostile_file() -> bytes:
    return ("\n".join(line for line, _ in HOSTILE) + "\n").encode()


def expected_rejections() -> dict[int, str]:
    return {n: field for n, (_, field) in enumerate(HOSTILE, 1) if field}


def test_surrogates_nul_keys_and_deep_nesting_are_refused_per_line_naming_the_field():
    entries = list(parse_stream(io.BufferedReader(io.BytesIO(hostile_file())), "jsonl"))
    assert [e.custom_id for e in entries if isinstance(e, ParsedItem)] == ["ok1", "ok2"]
    rejected = {e.line_no: e for e in entries if isinstance(e, Rejection)}
    assert set(rejected) == set(expected_rejections())
    for line_no, field in expected_rejections().items():
        assert rejected[line_no].reason.startswith(f"field '{field}'"), rejected[line_no].reason
        json.dumps(rejected[line_no].reason, ensure_ascii=False).encode()  # storable: no NUL, no lone surrogate
    assert "lone surrogate" in rejected[2].reason and "NUL" in rejected[6].reason
    assert f"more than {MAX_DEPTH} levels" in rejected[8].reason and "levels" in rejected[9].reason
    assert rejected[2].custom_id == "c3" and rejected[3].custom_id is None  # an id that cannot be stored is left out


def test_the_rest_of_a_hostile_batch_is_stored(settings, tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_bytes(hostile_file())
    sf, result = submit(settings, path)
    assert result.n_items == 2 and sorted(n for n, _ in result.rejected) == sorted(expected_rejections())
    assert [i.custom_id for i in items(sf, result.job_id)] == ["ok1", "ok2"]
    with sf() as session:
        assert [r.line_no for r in rejected_lines(session, result.job_id)] == sorted(expected_rejections())


def test_a_csv_with_a_surrogate_in_a_file_name_or_a_nul_in_a_cell_stores_the_rest(settings, tmp_path):
    path = tmp_path / "b.csv"
    path.write_bytes(b"id,prompt\n1,fine\n2,nul\x00here\n3,fine too\n")
    sf = open_database(settings.resolved_database_url)
    with path.open("rb") as f:  # a file name the CLI read from a non-UTF-8 argument
        result = submit_job(sf, settings, f, "csv", JobOptions(router="random"), source_name="caf\udce9.csv")
    assert result.n_items == 2 and [n for n, _ in result.rejected] == [3]


def test_the_api_refuses_unstorable_fields_ids_and_feedback_and_stores_the_rest_of_a_file(settings):
    sf = open_database(settings.resolved_database_url)
    _, key = create_tenant(sf, "acme")
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/jobs", headers=auth, files={"file": ("b.jsonl", hostile_file())},
                        data={"router": "random", "strong_fraction": "0"})
        assert r.status_code == 201, r.text
        assert r.json()["n_items"] == 2
        assert sorted(x["line"] for x in r.json()["rejected"]) == sorted(expected_rejections())
        job_id = r.json()["job_id"]

        for field, value in (("tag", "a\x00b"), ("router", "rand\x00om")):
            r = client.post("/v1/jobs", headers=auth, files={"file": ("b.jsonl", hostile_file())},
                            data={"router": "random", field: value})
            assert r.status_code == 422 and field in r.json()["detail"] and "NUL" in r.json()["detail"], r.text

        for method, path in (("GET", "/v1/jobs/job_%00x"), ("POST", "/v1/jobs/job_%00x/cancel"),
                             ("GET", "/v1/jobs/job_%00x/results"), ("GET", "/v1/files/file-%00")):
            r = client.request(method, path, headers=auth)
            assert r.status_code == 404, (path, r.text)
            message = r.json().get("detail") or r.json()["error"]["message"]
            assert "'job_\\u0000x'" in message or "'file-\\u0000'" in message, message  # escaped once, readable

        r = client.get("/v1/files?after=x%00", headers=auth)
        assert r.status_code == 400 and "after" in r.text, r.text  # the Files API's envelope: 400

        for custom_id in ("p0\\u0000", "p0\\ud800"):
            r = client.post(f"/v1/jobs/{job_id}/feedback", headers={**auth, "Content-Type": "application/json"},
                            content=f'{{"custom_id": "{custom_id}", "kind": "rating", "value": 0.5}}'.encode())
            assert r.status_code == 422 and "custom_id" in r.text, r.text

        file_id = client.post("/v1/files", headers=auth, files={"file": ("b.jsonl", hostile_file())},
                              data={"purpose": "batch"}).json()["id"]
        r = client.post("/v1/batches", headers=auth, json={"input_file_id": file_id, "completion_window": "24h",
                                                          "endpoint": "/v1/chat/completions"})
        assert r.status_code == 200, r.text
        assert r.json()["request_counts"] == {"total": 10, "completed": 0, "failed": 9}  # ok1 taken; others refused


def test_an_admin_request_with_a_lone_surrogate_in_a_tenant_name_is_a_422(settings):
    admin_key = "a" * 40
    body = b'{"name": "ac\\ud800me"}'  # a NUL is refused as a control character already
    with TestClient(create_app(settings.model_copy(update={"admin_key": SecretStr(admin_key)}))) as client:
        r = client.post("/v1/admin/tenants", headers={"Authorization": f"Bearer {admin_key}",
                                                      "Content-Type": "application/json"}, content=body)
        assert r.status_code == 422 and "name" in r.text and "surrogate" in r.text, r.text
        r = client.post("/v1/admin/tenants", headers={"Content-Type": "application/json"}, content=body)
        assert r.status_code == 401  # the admin key is checked first
