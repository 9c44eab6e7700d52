from datetime import UTC, datetime

import pytest

from db.models import Schedule
from db.session import open_database
from jobs.services.schedules import add_schedule, claim_due, next_run, parse_cron


def test_cron_is_parsed_and_bad_cron_is_a_clear_error():
    row = Schedule(task="retrain", cron="0 2 * * *", args={},
                   created_at=datetime(2026, 11, 24, 1, 0, tzinfo=UTC))
    assert next_run(row) == datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
    row.last_run_at = datetime(2026, 11, 24, 2, 0, tzinfo=UTC)
    assert next_run(row) == datetime(2026, 11, 25, 2, 0, tzinfo=UTC)
    weekly = Schedule(task="retrain", cron="30 3 * * 1", args={},  # Mondays 03:30; 2026-11-24 is a Tuesday
                      created_at=datetime(2026, 11, 24, 12, 0, tzinfo=UTC))
    assert next_run(weekly) == datetime(2026, 11, 30, 3, 30, tzinfo=UTC)
    with pytest.raises(ValueError, match="5 fields"):
        parse_cron("0 2 * *")
    with pytest.raises(ValueError, match="cron '99 2"):
        parse_cron("99 2 * * *")


def test_schedules_persist_and_a_due_one_is_claimed_once(database_url):
    sf = open_database(database_url)
    with pytest.raises(ValueError, match="exactly one"):
        add_schedule(sf, "retrain", {}, cron="0 2 * * *", every_s=5)
    sid = add_schedule(sf, "retrain", {"router": "mf"}, every_s=60)
    later = datetime(2100, 1, 1, tzinfo=UTC)
    first, second = claim_due(open_database(database_url), later), claim_due(sf, later)  # two beats racing
    assert [r.id for r in first] == [sid] and second == []
    with sf() as session:
        assert session.get(Schedule, sid).args == {"router": "mf"}
