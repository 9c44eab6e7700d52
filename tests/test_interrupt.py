"""Ctrl-C on a job the CLI runs (trial finding 4): one line saying what is kept and how to resume, exit 130; the
job is no longer held, the items that were in flight are back to routed (called again on resume), and their
requests count as unanswered in the spend report, since they may have been billed (those of calls that had
started; items claimed ahead and still waiting for a call slot sent nothing and go back uncounted)."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from jobs_helpers import write_batch
from sqlalchemy import func, select
from test_cli import ROOT, ROUTEYARD, cli_env, routeyard

from db.models import Item, Job
from db.session import open_database
from routeyard.states import ItemStatus, JobStatus


def _sigint_default() -> None:
    # A child of a non-interactive shell (or of this test run) may inherit SIGINT ignored; a user's terminal
    # delivers it to a process that has the default handler.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow  # CLI processes
def test_ctrl_c_mid_calls_releases_the_job_and_counts_the_calls_cut_off(tmp_path, postgres_url, loopback):
    loopback.config.latency_scale = 30.0  # ~1 s a call, 4 at a time: calls are in flight when Ctrl-C comes
    prompts = [f"Interrupt prompt {i}: explain a prime." for i in range(80)]
    env = cli_env(tmp_path / "home", postgres_url, loopback.base_url, ROUTEYARD_CONCURRENCY="4")
    batch = write_batch(tmp_path / "b.jsonl", prompts)
    run = subprocess.Popen([*ROUTEYARD, "submit", str(batch), "--router", "random"], env=env, cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default)
    sf = open_database(postgres_url)
    try:
        deadline = time.monotonic() + 120
        while True:
            with sf() as s:
                done = s.scalar(select(func.count()).where(Item.status == ItemStatus.SUCCEEDED)) or 0
                flying = s.scalar(select(func.count()).where(Item.status == ItemStatus.IN_FLIGHT)) or 0
            if done >= 4 and flying:
                break
            assert time.monotonic() < deadline and run.poll() is None, "the run ended too soon"
            time.sleep(0.05)
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]
    with sf() as s:
        job = s.scalar(select(Job))
        assert job is not None
        job_id = job.id
        assert job.runner_id is None  # no process holds it
        counts = dict(s.execute(select(Item.status, func.count()).group_by(Item.status)).all())
        assert ItemStatus.IN_FLIGHT not in counts, counts
        unanswered = s.scalar(select(func.sum(Item.unanswered_attempts))) or 0
        routed_with_unanswered = s.scalar(select(func.count()).where(
            Item.status == ItemStatus.ROUTED, Item.unanswered_attempts > 0)) or 0
        claimed_never_sent = s.scalar(select(func.count()).where(
            Item.status == ItemStatus.ROUTED, Item.attempts > 0, func.coalesce(Item.unanswered_attempts, 0) == 0))
    assert last.startswith(f"interrupted: job {job_id} keeps its {counts[ItemStatus.SUCCEEDED]} finished items")
    assert f"`routeyard resume {job_id}` continues" in last and "Traceback" not in stderr
    assert unanswered >= 1 and routed_with_unanswered == unanswered  # each cut-off call: its item, back to routed
    # Only calls that had started count (at most the 4 slots); items claimed ahead, still waiting for a slot,
    # sent nothing: they go back to routed uncounted.
    assert unanswered <= 4 and claimed_never_sent >= 1, (unanswered, claimed_never_sent)
    assert f"{unanswered} call{'s' if unanswered != 1 else ''} cut off will be made again" in last

    status = json.loads(routeyard("status", job_id, "--json", env=env).stdout)
    assert status["counts"].get("in_flight", 0) == 0
    assert status["status"] == "running" and status["interrupted"] is True  # stored state, and that it stopped
    text = " ".join(routeyard("status", job_id, env=env).stdout.split())
    assert f"interrupted while running: no process runs it now; `routeyard resume {job_id}` continues" in text
    listed = json.loads(routeyard("jobs", "--json", env=env).stdout)  # the list says so too, not just `running`
    assert [(j["id"], j["status"], j["interrupted"]) for j in listed] == [(job_id, "running", True)]
    assert "interrupted (running; resume)" in " ".join(routeyard("jobs", env=env).stdout.split())
    spend = json.loads(routeyard("spend", job_id, "--json", env=env).stdout)
    assert spend["unanswered_requests"] == unanswered, spend

    loopback.config.latency_scale = 1.0
    resumed = routeyard("resume", job_id, env=env)
    assert resumed.returncode == 0
    with sf() as s:
        assert s.get(Job, job_id).status == JobStatus.COMPLETED
        assert s.scalar(select(func.count()).where(Item.status == ItemStatus.SUCCEEDED)) == len(prompts)
    assert json.loads(routeyard("status", job_id, "--json", env=env).stdout)["interrupted"] is False
    assert json.loads(routeyard("jobs", "--json", env=env).stdout)[0]["interrupted"] is False
    # The answers the resume got do not write over the requests the Ctrl-C cut off: they still count.
    after = json.loads(routeyard("spend", job_id, "--json", env=env).stdout)
    assert after["unanswered_requests"] == unanswered, after
