"""The HTTP API in-process (embedded mode runs the job in the background): tenants, validation, exports."""

import csv
import io
import json
import time

import pytest
from fastapi.testclient import TestClient
from jobs_helpers import write_batch

from db.session import open_database
from jobs.api import create_app
from jobs.services.tenants import create_tenant


@pytest.fixture
def api(settings):
    sf = open_database(settings.resolved_database_url)
    _, key_a = create_tenant(sf, "tenant-a")
    _, key_b = create_tenant(sf, "tenant-b")
    with TestClient(create_app(settings)) as client:
        yield client, {"Authorization": f"Bearer {key_a}"}, {"Authorization": f"Bearer {key_b}"}


def upload(client, headers, path, **data):
    with path.open("rb") as f:
        return client.post("/v1/jobs", headers=headers, files={"file": (path.name, f)},
                           data={"router": "random", **data})


def wait_done(client, headers, job_id):
    for _ in range(200):
        body = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if body["status"] == "completed":
            return body
        time.sleep(0.05)
    raise AssertionError(body)


def test_submit_status_pages_exports_and_spend(api, tmp_path):
    client, a, _ = api
    path = write_batch(tmp_path / "b.jsonl", [f"prompt {i}" for i in range(25)], {5: "{broken"})
    r = upload(client, a, path, strong_fraction="0.2")
    assert r.status_code == 201
    body = r.json()
    assert body["created"] and body["n_items"] == 25
    assert [r["line"] for r in body["rejected"]] == [6] and "invalid JSON" in body["rejected"][0]["reason"]
    status = wait_done(client, a, body["job_id"])
    assert status["counts"] == {"succeeded": 25} and status["n_rejected"] == 1
    page = client.get(f"/v1/jobs/{body['job_id']}/results", headers=a, params={"offset": 20, "limit": 10}).json()
    assert [i["custom_id"] for i in page["items"]] == [f"req-{i}" for i in range(20, 25)]
    assert page["next_offset"] is None
    first = client.get(f"/v1/jobs/{body['job_id']}/results", headers=a, params={"limit": 10}).json()
    assert first["next_offset"] == 10
    openai_lines = client.get(f"/v1/jobs/{body['job_id']}/results/export", headers=a, params={"format": "openai"})
    rows = [json.loads(line) for line in openai_lines.text.splitlines()]
    assert len(rows) == 25 and all(r["response"]["status_code"] == 200 for r in rows)
    table = list(csv.DictReader(io.StringIO(client.get(f"/v1/jobs/{body['job_id']}/results/export", headers=a,
                                                       params={"format": "csv"}).text)))
    assert len(table) == 25 and sum(row["tier"] == "strong" for row in table) == 5
    spend = client.get(f"/v1/jobs/{body['job_id']}/spend", headers=a).json()
    assert spend["calls"] == 25 and spend["saving_usd"] > 0
    assert client.get("/v1/spend", headers=a).json()["calls"] == 25


def test_a_tenant_sees_only_its_own_jobs(api, tmp_path):
    client, a, b = api
    job_id = upload(client, a, write_batch(tmp_path / "b.jsonl", ["x", "y"])).json()["job_id"]
    wait_done(client, a, job_id)
    for url in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/results", f"/v1/jobs/{job_id}/spend",
                f"/v1/jobs/{job_id}/results/export"):
        assert client.get(url, headers=b).status_code == 404
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=b).status_code == 404
    assert client.get("/v1/jobs", headers=b).json() == []
    assert client.get("/v1/spend", headers=b).json()["calls"] == 0
    assert [j["id"] for j in client.get("/v1/jobs", headers=a).json()] == [job_id]


def test_missing_or_wrong_keys_are_refused(api, tmp_path):
    client, _, _ = api
    assert client.get("/v1/jobs").status_code == 401
    assert client.get("/v1/jobs", headers={"Authorization": "Bearer ry_wrong"}).status_code == 401


def test_bad_requests_name_the_field(api, tmp_path):
    client, a, _ = api
    path = write_batch(tmp_path / "b.jsonl", ["x"])
    r = upload(client, a, path, strong_fraction="1.5")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "strong_fraction"]
    r = client.post("/v1/jobs", headers=a, data={"router": "random"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "file"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("{bad\n")
    r = upload(client, a, empty)
    assert r.status_code == 422 and "line 1: invalid JSON" in r.json()["detail"]
    r = client.get("/v1/jobs/x/results", headers=a, params={"limit": 0})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "limit"]


def test_idempotency_key_header_and_cancel(api, tmp_path, loopback):
    client, a, _ = api
    loopback.config.latency_scale = 50.0  # slow enough to cancel mid-job
    path = write_batch(tmp_path / "b.jsonl", [f"slow {i}" for i in range(200)])
    first = upload(client, a | {"Idempotency-Key": "k-1"}, path).json()
    again = upload(client, a | {"Idempotency-Key": "k-1"}, path)
    assert again.status_code == 201 and not again.json()["created"] and again.json()["job_id"] == first["job_id"]
    other = write_batch(tmp_path / "c.jsonl", ["different"])
    assert upload(client, a | {"Idempotency-Key": "k-1"}, other).status_code == 409
    r = client.post(f"/v1/jobs/{first['job_id']}/cancel", headers=a)
    assert r.status_code == 200
    status = client.get(f"/v1/jobs/{first['job_id']}", headers=a).json()
    assert status["status"] == "cancelled"
    assert status["counts"].get("cancelled", 0) == r.json()["cancelled_items"] > 0
    deadline = time.monotonic() + 90  # calls already in flight finish (slowly on a loaded machine)
    while True:
        counts = client.get(f"/v1/jobs/{first['job_id']}", headers=a).json()["counts"]
        if "in_flight" not in counts and "routed" not in counts:
            break
        assert time.monotonic() < deadline, f"calls still in flight after cancel: {counts}"
        time.sleep(0.1)
    assert counts["cancelled"] == r.json()["cancelled_items"]
    assert counts.get("succeeded", 0) + counts["cancelled"] == 200


def test_openapi_spec_is_served(api):
    client, _, _ = api
    spec = client.get("/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/results", "/v1/jobs/{job_id}/spend",
            "/v1/jobs/{job_id}/cancel"} <= set(spec["paths"])
    ok = {path: spec["paths"][path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
          for path in ("/v1/jobs/{job_id}", "/v1/spend", "/v1/jobs")}
    assert ok["/v1/jobs/{job_id}"] == {"$ref": "#/components/schemas/JobStatusResponse"}
    assert ok["/v1/spend"] == {"$ref": "#/components/schemas/SpendResponse"}
    assert ok["/v1/jobs"]["items"] == {"$ref": "#/components/schemas/JobSummary"}
    assert "404" in spec["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]


def test_the_embedded_executor_can_run_jobs_inline(settings, tmp_path):
    """The app owns a background executor in embedded mode; a test may hand it one that runs jobs inline."""
    from routeyard.testing.inline import InlineExecutor

    sf = open_database(settings.resolved_database_url)
    _, key = create_tenant(sf, "inline")
    with TestClient(create_app(settings, executor=InlineExecutor())) as client:
        headers = {"Authorization": f"Bearer {key}"}
        job_id = upload(client, headers, write_batch(tmp_path / "b.jsonl", ["x", "y", "z"])).json()["job_id"]
        status = client.get(f"/v1/jobs/{job_id}", headers=headers).json()  # no polling: it ran in the request
    assert status["status"] == "completed" and status["counts"] == {"succeeded": 3}


def test_feedback_over_http_is_validated_and_tenant_scoped(api, tmp_path):
    client, a, b = api
    job_id = upload(client, a, write_batch(tmp_path / "b.jsonl", ["x", "y"])).json()["job_id"]
    wait_done(client, a, job_id)
    ok = client.post(f"/v1/jobs/{job_id}/feedback", headers=a, json={"custom_id": "req-0", "kind": "thumbs",
                                                                     "value": 1})
    assert ok.status_code == 201 and ok.json()["id"] > 0
    bad = client.post(f"/v1/jobs/{job_id}/feedback", headers=a, json={"custom_id": "req-0", "kind": "stars",
                                                                      "value": 1})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "kind"]
    missing = client.post(f"/v1/jobs/{job_id}/feedback", headers=a, json={"custom_id": "zzz", "kind": "thumbs",
                                                                          "value": 0})
    assert missing.status_code == 422 and "no item 'zzz'" in missing.json()["detail"]
    other = client.post(f"/v1/jobs/{job_id}/feedback", headers=b, json={"custom_id": "req-0", "kind": "thumbs",
                                                                        "value": 1})
    assert other.status_code == 404
