"""The CLI as a user runs it: separate processes, killed mid-job and resumed; the demo end to end."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import STRONG, TEST_KEY, WEAK
from jobs_helpers import calls_per_prompt, write_batch
from sqlalchemy import func, select

from db.models import Item, Job
from db.session import open_database
from routers.base import version_of
from routers.registry import DEFAULT_ROUTER, PRETRAINED_DIR

ROUTEYARD = [sys.executable, "-m", "jobs.cli"]
ROOT = Path(__file__).resolve().parent.parent


def cli_env(home: Path, database_url: str | None = None, base_url: str | None = None, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEYARD_")}
    env.update(ROUTEYARD_HOME=str(home), PYTHONPATH=str(ROOT), **extra)
    if database_url:
        env["ROUTEYARD_DATABASE_URL"] = database_url
    if base_url:
        env.update(ROUTEYARD_STRONG_BASE_URL=base_url, ROUTEYARD_WEAK_BASE_URL=base_url,
                   ROUTEYARD_STRONG_MODEL=STRONG, ROUTEYARD_WEAK_MODEL=WEAK,
                   ROUTEYARD_STRONG_API_KEY=TEST_KEY, ROUTEYARD_WEAK_API_KEY=TEST_KEY)
    return env


def routeyard(*args: str, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([*ROUTEYARD, *args], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    if check and proc.returncode != 0:
        raise AssertionError(f"routeyard {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.mark.slow
def test_a_killed_job_resumes_without_recalling_finished_items_or_double_counting(
        tmp_path, database_url, loopback):
    loopback.config.latency_scale = 8.0  # ~0.2-0.5 s a call: slow enough to kill mid-run
    prompts = [f"Explain fact number {i} about prime numbers." for i in range(60)]
    batch = write_batch(tmp_path / "batch.jsonl", prompts)
    env = cli_env(tmp_path / "home", database_url, loopback.base_url, ROUTEYARD_CONCURRENCY="4")
    proc = subprocess.Popen([*ROUTEYARD, "submit", str(batch), "--router", "random", "--key", "k1"], env=env,
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sf = open_database(database_url)
    deadline = time.monotonic() + 120
    done_before = 0
    while time.monotonic() < deadline and proc.poll() is None:
        with sf() as session:
            done_before = session.scalar(select(func.count()).where(Item.status == "succeeded"))
        if done_before >= 12:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the job ended before it could be killed:\n{proc.stdout.read()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    with sf() as session:
        job_id = session.scalar(select(Job.id))
        finished = set(session.scalars(select(Item.prompt).where(Item.status == "succeeded")))
        assert 12 <= len(finished) < 60
        cut_off = set(session.scalars(select(Item.id).where(Item.status == "in_flight")))
        assert cut_off, "nothing was in flight at the kill"
    calls_at_kill = calls_per_prompt(loopback.base_url)

    # Resubmitting with the same key finds the job; resume finishes it.
    again = routeyard("submit", str(batch), "--router", "random", "--key", "k1", "--detach", env=env)
    assert f"job {job_id} already submitted" in " ".join(again.stdout.split())
    resumed = routeyard("resume", job_id, env=env)
    assert "completed" in resumed.stdout

    calls = calls_per_prompt(loopback.base_url)
    assert all(calls[p] == 1 for p in finished), "a finished item was called again"
    assert all(calls[p] >= 1 for p in prompts)
    with sf() as session:
        assert session.scalar(select(func.count()).select_from(Item)) == 60
        rows = list(session.scalars(select(Item)))
        assert {r.status for r in rows} == {"succeeded"}
        assert sum(r.tier == "strong" for r in rows) == 18
        item_cost = sum(r.cost_usd for r in rows)
        # The calls the kill cut off may have been billed: the resume counted each once as unanswered, as a
        # Ctrl-C would have, and no other item.
        assert {r.id: r.unanswered_attempts for r in rows if r.unanswered_attempts} == dict.fromkeys(cut_off, 1)
    spend = json.loads(routeyard("spend", job_id, "--json", env=env).stdout)
    assert spend["calls"] == 60 and spend["cost_usd"] == pytest.approx(item_cost)
    assert sum(calls_at_kill.values()) < sum(calls.values())

    status = json.loads(routeyard("status", job_id, "--json", env=env).stdout)
    assert status["status"] == "completed" and status["counts"] == {"succeeded": 60}
    out = tmp_path / "results.jsonl"
    routeyard("results", job_id, "--format", "openai", "--output", str(out), env=env)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["custom_id"] for line in lines] == [f"req-{i}" for i in range(60)]
    assert all(line["response"]["status_code"] == 200 for line in lines)
    for text in (resumed.stdout, resumed.stderr, again.stdout, again.stderr):
        assert TEST_KEY not in text


@pytest.mark.slow  # runs the CLI in fresh processes (seconds each)
def test_cli_reports_bad_input_and_unknown_jobs_clearly(tmp_path, loopback):
    env = cli_env(tmp_path / "home", None, loopback.base_url)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": ""}\n')
    proc = routeyard("submit", str(bad), "--router", "random", env=env, check=False)
    assert proc.returncode == 2 and "line 1: field 'prompt'" in " ".join(proc.stderr.split())
    proc = routeyard("status", "job_missing", env=env, check=False)
    assert proc.returncode == 2 and "no job 'job_missing'" in proc.stderr
    proc = routeyard("results", "job_missing", "--format", "xml", env=env, check=False)
    assert proc.returncode == 2 and "--format must be" in proc.stderr


@pytest.mark.slow
def test_the_demo_runs_a_whole_routed_job_on_the_embedded_default(tmp_path):
    """The README's first command, minus the install: no configuration, no server to start."""
    env = cli_env(tmp_path / "home")
    proc = routeyard("demo", "--n", "30", "--latency-scale", "0.05", env=env)
    text = " ".join(proc.stdout.split())
    assert "30 items, 2 rejected" in text and "completed: succeeded 30" in text and "saving $" in text
    sf = open_database(f"sqlite:///{tmp_path / 'home' / 'routeyard.db'}")
    with sf() as session:
        rows = list(session.scalars(select(Item)))
        assert sum(r.tier == "strong" for r in rows) == 9
        assert {r.router_version for r in rows} == {f"{DEFAULT_ROUTER}@{version_of(PRETRAINED_DIR / DEFAULT_ROUTER)}"}
        assert all(r.cost_usd > 0 for r in rows)


@pytest.mark.slow
def test_router_train_takes_settings_and_names_a_bad_or_unknown_one(tmp_path, embedding_cache):
    data = tmp_path / "outcomes.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {i}: what is {i} plus {i * 7}?", "strong": i % 2,
                                        "weak": 0}) + "\n" for i in range(12)))
    home = tmp_path / "home"
    home.mkdir()
    (home / "cache").symlink_to(embedding_cache, target_is_directory=True)
    env = cli_env(home)
    routeyard("router", "train", "--router", "sw_ranking", "--data", str(data), "--out", str(tmp_path / "sw"),
              "--param", "gamma=100", "--param", "chunk=64", env=env)
    config = json.loads((tmp_path / "sw" / "config.json").read_text())
    assert config["gamma"] == 100 and config["chunk"] == 64
    bad = routeyard("router", "train", "--router", "sw_ranking", "--data", str(data), "--out", str(tmp_path / "x"),
                    "--param", "gama=100", env=env, check=False)
    assert bad.returncode == 2 and "gama" in bad.stderr and "gamma" in bad.stderr
    malformed = routeyard("router", "train", "--router", "mf", "--data", str(data), "--out", str(tmp_path / "y"),
                          "--param", "dim", env=env, check=False)
    assert malformed.returncode == 2 and "'dim'" in malformed.stderr and "key=value" in malformed.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
