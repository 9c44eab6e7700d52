"""Which routers a job may name (issue 14, point 1): a tenant only what the operator published, the operator
(CLI, settings) also directories and hub ids; every spec is checked before anything is stored; a router that
passes the check and still fails to load fails its job once, with the reason, and nothing re-runs it."""

from __future__ import annotations

import json
import os
import time

from conftest import STRONG, TEST_KEY, WEAK
from fastapi.testclient import TestClient
from jobs_helpers import server_stats, submit, write_batch
from sqlalchemy import func, select

from db import catalog, runners
from db import jobs as store
from db.models import Item, Job, RouterVersion
from db.session import open_database
from jobs.api import create_app
from jobs.cli import app as cli_app
from jobs.cli.context import Stages, run_app
from jobs.cli.job_commands import follow
from jobs.services.tenants import create_tenant
from routers.base import version_of
from routeyard.states import ItemStatus, JobStatus
from worker.embedded import run_embedded


def saved_router(path, router="random"):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"router": router, "note": path.name}))  # each its own version
    return path


def add_version(sf, path, *, serve, tenant_id=None):
    with sf() as session:
        row = catalog.add_version(session, RouterVersion(router="random", version=version_of(path), path=str(path),
                                                         decision="test", tenant_id=tenant_id), serve=serve)
        session.commit()
        return f"{row.router}@{row.version}"


def n_jobs(sf) -> int:
    with sf() as session:
        return session.scalar(select(func.count()).select_from(Job)) or 0


def test_a_tenant_may_name_only_published_routers(settings, tmp_path):
    sf = open_database(settings.resolved_database_url)
    _, key = create_tenant(sf, "acme")
    auth = {"Authorization": f"Bearer {key}"}
    promoted = add_version(sf, saved_router(tmp_path / "promoted"), serve=True)
    unpromoted = add_version(sf, saved_router(tmp_path / "candidate"), serve=False)
    batch = write_batch(tmp_path / "b.jsonl", ["one", "two"])
    with TestClient(create_app(settings)) as client:
        def post(router):
            with batch.open("rb") as f:
                return client.post("/v1/jobs", headers=auth, files={"file": ("b.jsonl", f)}, data={"router": router})

        for spec in ("/etc", "../", "~", "~/.ssh", str(tmp_path / "promoted"), "owner/some-router", unpromoted,
                     "lineer", "bert"):
            r = post(spec)
            assert r.status_code == 422, (spec, r.text)
            assert "router" in r.json()["detail"], r.text
        assert n_jobs(sf) == 0  # nothing stored for any of them
        file_id = client.post("/v1/files", headers=auth, files={"file": ("b.jsonl", batch.read_bytes())},
                              data={"purpose": "batch"}).json()["id"]
        r = client.post("/v1/batches", headers=auth, json={
            "input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h",
            "metadata": {"router": "/etc"}})
        assert r.status_code == 400 and "set by the operator" in r.json()["error"]["message"], r.text
        assert n_jobs(sf) == 0

        shipped = next(v for v in client.get("/v1/router/versions", headers=auth).json() if v["owner"] == "shipped")
        shipped_label = f"{shipped['router']}@{shipped['version']}"  # the operator published it: a tenant may name it
        assert post(f"{shipped['router']}@{'0' * 12}").status_code == 422  # a version nobody published
        for spec, expected in (("random", "random"), (promoted, promoted), ("serving", promoted),  # never a path
                               (shipped_label, shipped_label), (shipped["version"], shipped_label)):
            r = post(spec)
            assert r.status_code == 201, (spec, r.text)
            assert client.get(f"/v1/jobs/{r.json()['job_id']}", headers=auth).json()["router"] == expected


def test_router_typos_on_the_cli_store_nothing(monkeypatch, capsys, tmp_path, loopback):
    for key in [k for k in os.environ if k.startswith("ROUTEYARD_")]:
        monkeypatch.delenv(key)
    for key, value in {"ROUTEYARD_HOME": str(tmp_path / "home"), "ROUTEYARD_STRONG_BASE_URL": loopback.base_url,
                       "ROUTEYARD_WEAK_BASE_URL": loopback.base_url, "ROUTEYARD_STRONG_MODEL": STRONG,
                       "ROUTEYARD_WEAK_MODEL": WEAK, "ROUTEYARD_STRONG_API_KEY": TEST_KEY,
                       "ROUTEYARD_WEAK_API_KEY": TEST_KEY}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    mine = saved_router(tmp_path / "models" / "mine")
    batch = write_batch(tmp_path / "b.jsonl", ["one", "two"])

    def cli(*args):
        try:
            run_app(cli_app, [str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        return code, capsys.readouterr()

    for typo, message in (("bert", "ships no checkpoint"), ("models/mien", "no such directory"),
                          (str(tmp_path / "nowhere"), "no such directory"), ("models", "without config.json")):
        code, out = cli("submit", batch, "--router", typo, "--detach")
        assert code == 2 and message in out.err and "Traceback" not in out.err, (typo, out)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the trial's machine: no hub
    for hub_id in ("my-routr/v1", "someorg/nonexistent-router-xyz"):  # a mistyped directory reads as a hub id
        for detach in ("--detach", "--no-detach"):
            code, out = cli("submit", batch, "--router", hub_id, detach)
            assert code == 1 and "cannot fetch this hub id" in out.err, (hub_id, out)
            assert len(out.err.strip().splitlines()) == 1 and "submitted" not in out.out, out
    code, out = cli("jobs", "--json")
    assert json.loads(out.out) == []
    code, out = cli("submit", batch, "--router", "models/mine", "--json")  # the operator may name a directory
    assert code == 0, out
    assert json.loads(out.out)["counts"] == {"succeeded": 2}
    assert mine.is_dir()


def test_a_router_that_does_not_load_fails_its_job_once(settings, tmp_path, loopback):
    broken = saved_router(tmp_path / "broken", router="linear")  # passes the check; has no weights to load
    sf, result = submit(settings, write_batch(tmp_path / "b.jsonl", ["one", "two", "three"]), router=str(broken))
    summary = run_embedded(sf, settings, result.job_id)
    assert summary.status == JobStatus.FAILED and summary.counts == {ItemStatus.FAILED: 3}
    with sf() as session:
        errors = set(session.scalars(select(Item.error).where(Item.job_id == result.job_id)))
        assert len(errors) == 1 and "could not be loaded (KeyError" in errors.pop()
        assert result.job_id not in [j.id for j in runners.stalled_jobs(session, 0.0)]  # the reconciler leaves it
        assert store.requeue(session, result.job_id, [ItemStatus.FAILED]) == 0  # --retry-failed too
        session.commit()
    assert run_embedded(sf, settings, result.job_id).status == JobStatus.FAILED
    assert server_stats(loopback.base_url)["calls"] == []


def test_following_a_job_whose_router_failed_draws_no_calls(settings, tmp_path, capsys):
    """`submit --wait` follows a job on the workers: one whose router failed to load made no call, so no
    `calling models` stage is drawn for it (its items are failed, not called); a routed job's calls are."""
    broken = saved_router(tmp_path / "broken", router="linear")
    sf, failed = submit(settings, write_batch(tmp_path / "b.jsonl", ["one", "two", "three"]), router=str(broken))
    run_embedded(sf, settings, failed.job_id)
    _, done = submit(settings, write_batch(tmp_path / "c.jsonl", ["one", "two"]), router="random")
    run_embedded(sf, settings, done.job_id)
    capsys.readouterr()
    with Stages() as stages:
        assert follow(sf, failed.job_id, stages, every_s=0.01).status == JobStatus.FAILED
    assert "calling models" not in capsys.readouterr().err
    with Stages() as stages:
        assert follow(sf, done.job_id, stages, every_s=0.01).status == JobStatus.COMPLETED
    assert "calling models: 2/2" in capsys.readouterr().err


def test_a_worker_fails_a_job_whose_router_does_not_load(settings, tmp_path, monkeypatch):
    from worker import tasks

    broken = saved_router(tmp_path / "broken", router="linear")
    sf, result = submit(settings, write_batch(tmp_path / "b.jsonl", ["one", "two"]), router=str(broken))
    monkeypatch.setenv("ROUTEYARD_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("ROUTEYARD_HOME", str(settings.home))
    for cached in (tasks.worker_settings, tasks.worker_db, tasks._open_database):
        cached.cache_clear()  # this worker's settings and database are read from the environment set above
    try:
        with sf() as session:
            ids = store.unscored_ids(session, result.job_id)
        tasks.score_batch(result.job_id, ids)  # runs the task here; it returns instead of raising
        tasks.score_batch(result.job_id, ids)  # a second delivery changes nothing
    finally:
        for cached in (tasks.worker_settings, tasks.worker_db, tasks._open_database):
            cached.cache_clear()
    with sf() as session:
        job = store.get_job(session, result.job_id)
        assert job.status == JobStatus.FAILED and job.finished_at is not None
        assert store.status_counts(session, result.job_id) == {ItemStatus.FAILED: 2}


def test_an_operator_default_router_that_fails_ends_a_tenant_job_as_failed(settings, tmp_path):
    broken = saved_router(tmp_path / "broken", router="linear")
    settings = settings.model_copy(update={"default_router": str(broken)})
    sf = open_database(settings.resolved_database_url)
    _, key = create_tenant(sf, "acme")
    auth = {"Authorization": f"Bearer {key}"}
    batch = write_batch(tmp_path / "b.jsonl", ["one", "two"])
    with TestClient(create_app(settings)) as client:
        r = client.post("/v1/jobs", headers=auth, files={"file": ("b.jsonl", batch.read_bytes())})
        assert r.status_code == 201, r.text
        job_id = r.json()["job_id"]
        for _ in range(200):
            status = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
            if status["status"] != "queued" and status["status"] != "scoring":
                break
            time.sleep(0.05)
        assert status["status"] == "failed" and status["counts"] == {"failed": 2}
        r = client.post(f"/v1/jobs/{job_id}/resume", headers=auth)
        assert r.status_code == 409 and "failed" in r.json()["detail"]


def test_a_tenant_may_not_name_another_tenants_version(settings, tmp_path):
    sf = open_database(settings.resolved_database_url)
    owner_id, key_a = create_tenant(sf, "a")
    _, key_b = create_tenant(sf, "b")
    theirs = add_version(sf, saved_router(tmp_path / "a-router"), serve=True, tenant_id=owner_id)
    batch = write_batch(tmp_path / "b.jsonl", ["one", "two"])
    with TestClient(create_app(settings)) as client:
        def post(key):
            return client.post("/v1/jobs", headers={"Authorization": f"Bearer {key}"},
                               files={"file": ("b.jsonl", batch.read_bytes())}, data={"router": theirs})

        assert post(key_b).status_code == 422
        assert post(key_a).status_code == 201


def test_every_cli_command_taking_a_router_checks_it_as_submit_does(monkeypatch, capsys, tmp_path):
    """`router score`, `router eval` and `check` refuse a mistyped router in one line (exit 2), and a hub id that
    cannot be fetched (offline here) is one line, exit 1 (a service unreachable), never "This is a bug"."""
    import huggingface_hub.constants

    for key in [k for k in os.environ if k.startswith("ROUTEYARD_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("ROUTEYARD_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the trial's machine: no hub
    monkeypatch.chdir(tmp_path)
    batch = write_batch(tmp_path / "b.jsonl", ["one", "two"])
    (tmp_path / "outcomes.jsonl").write_text(json.dumps({"prompt": "p", "strong": 1.0, "weak": 0.0}) + "\n")

    def cli(*args):
        try:
            run_app(cli_app, [str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        return code, capsys.readouterr()

    for typo in ("nosuchdir/", "my-router/", "./models/mien"):
        for args in (("router", "score", "--input", batch, "--output", tmp_path / "s.jsonl"),
                     ("router", "eval", "--outcomes", tmp_path / "outcomes.jsonl", "--out", tmp_path / "ev")):
            code, out = cli(*args, "--router", typo)
            assert code == 2, (typo, args, out)
            assert out.err.startswith("error: unknown router") and "bug" not in out.err, out.err
            assert len(out.err.strip().splitlines()) == 1, out.err
    code, out = cli("router", "score", "--router", "foo/bar", "--input", batch, "--output", tmp_path / "s.jsonl")
    assert code == 1 and "cannot fetch this hub id" in out.err and "bug" not in out.err, out
    assert len(out.err.strip().splitlines()) == 1, out.err
    assert not (tmp_path / "s.jsonl").exists() and not (tmp_path / "ev").exists()
