"""Spend over time: per day and week, per tag, with the saving; and its plot."""

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import make_settings
from jobs_helpers import items, submit_and_run, write_batch
from sqlalchemy import update

from db.models import Item
from jobs.services.spend import spend_over_time, spend_report

ROOT = Path(__file__).resolve().parent.parent


def test_spend_is_bucketed_by_day_and_week_and_tag(settings, tmp_path):
    sf, a, _ = submit_and_run(settings, write_batch(tmp_path / "a.jsonl", [f"a{i}" for i in range(6)]), tag="nightly")
    _, b, _ = submit_and_run(settings, write_batch(tmp_path / "b.jsonl", [f"b{i}" for i in range(4)]), tag="adhoc")
    # Spread the finished items over three days: Sun 22 Nov, Mon 23 Nov, Tue 24 Nov 2026 (UTC).
    days = [datetime(2026, 11, d, 12, tzinfo=UTC) for d in (22, 23, 24)]
    with sf() as session:
        for n, row in enumerate(items(sf, a.job_id) + items(sf, b.job_id)):
            session.execute(update(Item).where(Item.id == row.id).values(finished_at=days[n % 3]))
        session.commit()
        by_day = spend_over_time(session, settings, "day")
        by_week = spend_over_time(session, settings, "week")
        nightly = spend_over_time(session, settings, "day", tag="nightly")
        total = spend_report(session, settings)
    assert [p.period for p in by_day] == ["2026-11-22", "2026-11-23", "2026-11-24"]
    assert [p.calls for p in by_day] == [4, 3, 3]
    assert [p.period for p in by_week] == ["2026-11-16", "2026-11-23"]  # Sunday belongs to the week before
    assert [p.calls for p in by_week] == [4, 6]
    assert sum(p.cost_usd for p in by_day) == pytest.approx(total.cost_usd)
    assert sum(p.saving_usd for p in by_week) == pytest.approx(total.saving_usd)
    assert sum(p.calls for p in nightly) == 6 and all(set(p.by_tag) == {"nightly"} for p in nightly)


@pytest.mark.slow
def test_spend_cli_writes_csv_and_a_plot(tmp_path, loopback, embedding_cache):
    settings = make_settings(tmp_path / "home", f"sqlite:///{tmp_path / 'r.db'}", loopback, embedding_cache)
    submit_and_run(settings, write_batch(tmp_path / "a.jsonl", ["x", "y", "z"]))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "ROUTEYARD_HOME": str(settings.home),
           "ROUTEYARD_DATABASE_URL": settings.resolved_database_url,
           "ROUTEYARD_WEAK_MODEL": settings.weak_model, "ROUTEYARD_STRONG_MODEL": settings.strong_model}
    out = subprocess.run([sys.executable, "-m", "jobs.cli", "spend", "--by", "week", "--csv", "--plot",
                          str(tmp_path / "spend.png")], env=env, capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("period,calls") and len(lines) == 2 and lines[1].split(",")[1] == "3"
    assert (tmp_path / "spend.png").read_bytes()[:4] == b"\x89PNG"
    js = subprocess.run([sys.executable, "-m", "jobs.cli", "spend", "--by", "day", "--json"], env=env,
                        capture_output=True, text=True, cwd=ROOT)
    assert json.loads(js.stdout)[0]["calls"] == 3
