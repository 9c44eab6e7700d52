"""The HTTP API in-process (embedded mode runs the job in the background): tenants, validation, exports."""

import csv
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import ROOT
from fastapi.testclient import TestClient
from jobs_helpers import calls_per_prompt, submit, write_batch
from sqlalchemy import select

from db.models import Item, Job
from db.session import open_database
from jobs.api import create_app
from jobs.services.tenants import create_tenant
from routeyard.testing.inline import InlineExecutor


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


# --- the API server's own faults: restarts, resume, offline docs ---------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api_process(settings, port: int, log: Path) -> subprocess.Popen:
    """`routeyard api` in its own process, configured like `settings` (embedded: no broker)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEYARD_")}
    env.update(PYTHONPATH=str(ROOT), ROUTEYARD_HOME=str(settings.home),
               ROUTEYARD_DATABASE_URL=settings.resolved_database_url,
               ROUTEYARD_STRONG_BASE_URL=settings.strong_base_url, ROUTEYARD_WEAK_BASE_URL=settings.weak_base_url,
               ROUTEYARD_STRONG_MODEL=settings.strong_model, ROUTEYARD_WEAK_MODEL=settings.weak_model,
               ROUTEYARD_STRONG_API_KEY=settings.strong_api_key.get_secret_value(),
               ROUTEYARD_WEAK_API_KEY=settings.weak_api_key.get_secret_value(), ROUTEYARD_CONCURRENCY="4")
    proc = subprocess.Popen([sys.executable, "-m", "jobs.cli", "api", "--port", str(port)], env=env, cwd=ROOT,
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"the API did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def item_states(sf, job_id: str) -> dict[str, str]:
    with sf() as session:
        return {i.prompt: i.status for i in session.scalars(select(Item).where(Item.job_id == job_id))}


@pytest.mark.slow
def test_a_job_left_running_by_a_killed_api_process_completes_when_the_api_starts_again(settings, loopback,
                                                                                         tmp_path):
    """The embedded API runs jobs on its own threads. SIGKILL it mid-job: the job stays `running` with items in
    flight; the next API process on the same database takes it up at start-up and finishes it, calling no item
    that had finished again."""
    sf = open_database(settings.resolved_database_url)
    _, key = create_tenant(sf, "acme")
    headers = {"Authorization": f"Bearer {key}"}
    loopback.config.latency_scale = 8.0  # ~0.3 s a call, 4 at a time: slow enough to kill mid-job
    prompts = [f"Restart prompt {i}: explain a prime." for i in range(60)]
    path = write_batch(tmp_path / "b.jsonl", prompts)
    port = free_port()
    proc = api_process(settings, port, tmp_path / "api.log")
    try:
        with path.open("rb") as f:
            r = httpx.post(f"http://127.0.0.1:{port}/v1/jobs", headers=headers, files={"file": (path.name, f)},
                           data={"router": "random"}, timeout=60)
        assert r.status_code == 201, r.text
        job_id = r.json()["job_id"]
        deadline = time.monotonic() + 120
        while sum(s == "succeeded" for s in item_states(sf, job_id).values()) < 12:
            assert time.monotonic() < deadline and proc.poll() is None, (tmp_path / "api.log").read_text()[-3000:]
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = item_states(sf, job_id)
    done_before = {p for p, s in before.items() if s == "succeeded"}
    in_flight = {p for p, s in before.items() if s == "in_flight"}
    with sf() as session:
        assert session.get(Job, job_id).status == "running"  # what nothing would ever move again
    assert 12 <= len(done_before) < len(prompts)

    loopback.config.latency_scale = 1.0
    with TestClient(create_app(settings)) as client:
        status = wait_done(client, headers, job_id)
        assert status["counts"] == {"succeeded": len(prompts)}
        assert client.get(f"/v1/jobs/{job_id}/spend", headers=headers).json()["calls"] == len(prompts)
    calls = calls_per_prompt(loopback.base_url)
    assert set(calls) == set(prompts)
    assert all(calls[p] == 1 for p in done_before), "an item finished before the kill was called again"
    assert {p for p, n in calls.items() if n > 1} <= in_flight and max(calls.values()) <= 2


def test_resume_over_http_is_tenant_scoped_and_never_runs_a_job_twice(api, tmp_path, loopback):
    client, a, b = api
    loopback.config.latency_scale = 8.0
    prompts = [f"resume {i}" for i in range(16)]
    job_id = upload(client, a, write_batch(tmp_path / "b.jsonl", prompts)).json()["job_id"]
    assert client.post(f"/v1/jobs/{job_id}/resume", headers=b).status_code == 404  # another tenant's job
    assert client.post("/v1/jobs/nope/resume", headers=a).status_code == 404
    again = client.post(f"/v1/jobs/{job_id}/resume", headers=a)  # still running on this process
    assert again.status_code == 200 and again.json()["resumed"] is False
    assert "already queued or running" in again.json()["detail"]
    wait_done(client, a, job_id)
    assert calls_per_prompt(loopback.base_url) == dict.fromkeys(prompts, 1)
    done = client.post(f"/v1/jobs/{job_id}/resume", headers=a).json()
    assert done["resumed"] is False and done["status"] == "completed" and "nothing is left" in done["detail"]
    assert calls_per_prompt(loopback.base_url) == dict.fromkeys(prompts, 1)


def test_resume_retries_failed_items_only_when_asked_and_refuses_a_cancelled_job(settings, tmp_path, loopback):
    settings = settings.model_copy(update={"max_retries": 0})
    sf = open_database(settings.resolved_database_url)
    _, key = create_tenant(sf, "acme")
    a = {"Authorization": f"Bearer {key}"}
    prompts = ["fine 1", "fine 2", "ROUTEYARD_ALWAYS_FAIL please"]
    with TestClient(create_app(settings, executor=InlineExecutor())) as client:
        job_id = upload(client, a, write_batch(tmp_path / "b.jsonl", prompts)).json()["job_id"]
        assert client.get(f"/v1/jobs/{job_id}", headers=a).json()["counts"] == {"succeeded": 2, "failed": 1}
        plain = client.post(f"/v1/jobs/{job_id}/resume", headers=a).json()
        assert plain["resumed"] is False and "retry_failed=true" in plain["detail"]
        retried = client.post(f"/v1/jobs/{job_id}/resume", headers=a, params={"retry_failed": "true"}).json()
        assert retried["resumed"] is True and retried["status"] == "completed"
        assert calls_per_prompt(loopback.base_url) == {"fine 1": 1, "fine 2": 1, "ROUTEYARD_ALWAYS_FAIL please": 2}

        _, cancelled = submit(settings, write_batch(tmp_path / "c.jsonl", ["x"]), tenant_id=_tenant_id(sf, key))
        assert client.post(f"/v1/jobs/{cancelled.job_id}/cancel", headers=a).status_code == 200
        refused = client.post(f"/v1/jobs/{cancelled.job_id}/resume", headers=a)
        assert refused.status_code == 409 and "was cancelled" in refused.json()["detail"]


def _tenant_id(sf, key: str) -> str:
    from jobs.services.tenants import tenant_for_key

    with sf() as session:
        return tenant_for_key(session, key).id


def test_start_up_resumes_only_api_jobs_and_only_when_the_api_runs_them(settings, tmp_path, monkeypatch):
    """A job of the CLI's (the local tenant) runs in the CLI's process, and `routeyard resume` is its way back;
    with a broker configured, the workers run jobs and beat's reconciler re-enqueues stalled ones."""
    sf = open_database(settings.resolved_database_url)
    _, key = create_tenant(sf, "acme")
    _, cli_job = submit(settings, write_batch(tmp_path / "cli.jsonl", ["from the cli"]))
    _, api_job = submit(settings, write_batch(tmp_path / "api.jsonl", ["from the api"]), tenant_id=_tenant_id(sf, key))
    enqueued: list[str] = []
    monkeypatch.setattr("worker.dispatch.enqueue", enqueued.append)
    brokered = settings.model_copy(update={"broker_url": "redis://127.0.0.1:9/0"})
    with TestClient(create_app(brokered)) as client:
        assert enqueued == []  # nothing resumed at start-up: not this process's to run
        r = client.post(f"/v1/jobs/{api_job.job_id}/resume", headers={"Authorization": f"Bearer {key}"}).json()
        assert r["resumed"] is True and "on the workers" in r["detail"] and enqueued == [api_job.job_id]
    with TestClient(create_app(settings, executor=InlineExecutor())):
        pass  # embedded: the start-up ran the API's job inline
    with sf() as session:
        assert session.get(Job, api_job.job_id).status == "completed"
        assert session.get(Job, cli_job.job_id).status == "queued"


def test_docs_load_every_asset_from_the_api_itself(api):
    """/docs and /redoc used to load Swagger UI and ReDoc from a CDN: blank on a machine without internet."""
    client, _, _ = api
    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200
        assert not re.findall(r"(?:https?:)?//[\w.-]+", html.text), f"{page} names an outside host"
        assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
        assert assets and all(a.startswith("/docs/assets/") for a in assets), assets
        for asset in assets:
            r = client.get(asset)
            assert r.status_code == 200 and len(r.content) > 1000, asset
    assert "SwaggerUIBundle" in client.get("/docs/assets/swagger-ui-bundle.js").text
    assert client.get("/docs/oauth2-redirect").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/jobs/{job_id}/resume", "/v1/admin/tenants", "/v1/admin/tenants/{tenant}/rotate"} <= set(paths)
