"""The size limits hold for what they name: an uploaded file to POST /v1/jobs is held to
ROUTEYARD_MAX_UPLOAD_BYTES itself (not the limit plus the form's room), and a CSV record to
ROUTEYARD_MAX_LINE_BYTES however many physical lines its quoted field spans."""

from __future__ import annotations

import asyncio
import io
import json

from fastapi.testclient import TestClient
from sqlalchemy import func, select
from test_hostile_input import Body, multipart, post

from db.models import Job
from db.session import open_database
from jobs.api import create_app
from jobs.services.input_formats import ParsedItem, Rejection, parse_stream
from jobs.services.tenants import create_tenant


def plain_lines(n: int) -> bytes:
    return b"".join(json.dumps({"id": f"q{i}", "prompt": f"prompt number {i} " + "x" * 40}).encode() + b"\n"
                    for i in range(n))


def test_a_file_over_the_upload_limit_is_a_413_on_every_upload_path(settings):
    settings = settings.model_copy(update={"max_upload_bytes": 100_000})
    sf = open_database(settings.resolved_database_url)
    _, key = create_tenant(sf, "acme")
    auth = {"Authorization": f"Bearer {key}"}
    big, small = plain_lines(3500), plain_lines(1000)  # about 270 kB and 77 kB
    assert len(big) > 250_000 and len(small) < 100_000
    app = create_app(settings)
    with TestClient(app) as client:
        for path, data in (("/v1/jobs", {"router": "random"}), ("/v1/files", {"purpose": "batch"})):
            r = client.post(path, headers=auth, files={"file": ("b.jsonl", big)}, data=data)
            assert r.status_code == 413, (path, r.status_code, r.text[:300])
            assert "100,000 bytes" in r.text and "ROUTEYARD_MAX_UPLOAD_BYTES" in r.text, r.text
        r = client.post("/v1/jobs", headers=auth, files={"file": ("b.jsonl", small)}, data={"router": "random"})
        assert r.status_code == 201 and r.json()["n_items"] == 1000, r.text
    with sf() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1
    data, kind = multipart(big)
    body = Body(data, chunk=16_384)  # streamed, no Content-Length: refused as the file passes the limit
    r = asyncio.run(post(app, "/v1/jobs", body, {"Content-Type": kind, **auth}))
    assert r.status_code == 413 and "ROUTEYARD_MAX_UPLOAD_BYTES" in r.text, r.text
    assert body.pulled <= 100_000 + 2 * 16_384, body.pulled


def parse_csv(data: bytes, max_line_bytes: int) -> list[ParsedItem | Rejection]:
    return list(parse_stream(io.BufferedReader(io.BytesIO(data)), "csv", max_line_bytes))


def test_a_csv_record_over_the_line_limit_is_refused_however_many_lines_it_spans():
    spread = "\n".join(["y" * 1000] * 5)  # 5,004 bytes on 5 lines of 1,001: each fits 2,000, the record does not
    data = f'id,prompt\na,short\nb,"{spread}"\nc,"two\nlines"\nd,short\n'.encode()
    entries = parse_csv(data, 2000)
    assert [e.custom_id for e in entries if isinstance(e, ParsedItem)] == ["a", "c", "d"]
    [refused] = [e for e in entries if isinstance(e, Rejection)]
    assert refused.line_no == 3 and "longer than 2,000 bytes" in refused.reason
    assert "ROUTEYARD_MAX_LINE_BYTES" in refused.reason


def test_a_csv_field_past_the_readers_own_limit_is_one_rejection_and_its_lines_are_not_rows():
    spread = "\n".join(["y" * 100_000] * 3)  # past the csv module's field limit (131,072 characters)
    data = f'id,prompt\na,short\nb,"{spread}"\nc,short\nd,"x\ny"\n'.encode()
    entries = parse_csv(data, 150_000)
    assert [e.custom_id for e in entries if isinstance(e, ParsedItem)] == ["a", "c", "d"]
    [refused] = [e for e in entries if isinstance(e, Rejection)]
    assert refused.line_no == 3 and "longer than 150,000 bytes" in refused.reason
