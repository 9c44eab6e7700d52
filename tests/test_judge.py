"""The judge: shadow pairs -> MT-Bench verdicts from the loopback judge -> feedback rows (source judge); errors
never labels; both orders; grade mode; resume; its own spend line; `routeyard judge JOB`."""

import json
from datetime import timedelta

import pytest
from conftest import STRONG, TEST_KEY, WEAK, judge_settings
from jobs_helpers import items, server_stats, submit, submit_and_run, write_batch
from pydantic import SecretStr
from sqlalchemy import select, update

from db.judging import claim_pairs, judgeable_ids
from db.models import Feedback, Job, Judgment, utcnow
from jobs.services.judge import judge_job_pairs
from jobs.services.spend import spend_report
from routeyard.errors import InvalidInput
from routeyard.states import JudgmentStatus
from worker.judge import judge_spec, pair_verdict, parse_grade, parse_pair, run_judge

JUDGE = "judge-model"
BOTH = pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)


@pytest.fixture(params=["sqlite"])
def database_url(request, tmp_path):
    """SQLite, and PostgreSQL too for the tests marked BOTH (the claims and the spend query differ by dialect)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'routeyard.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def settings(tmp_path, database_url, loopback, embedding_cache):
    return judge_settings(tmp_path / "home", database_url, loopback, JUDGE, embedding_cache)


def judge_calls(base_url: str) -> int:
    return server_stats(base_url)["by_model"].get(JUDGE, 0)


PROMPTS = [f"Question {i}: how many primes lie below {10 * i + 7}?" for i in range(12)]


@BOTH
def test_verdicts_in_both_orders_become_judge_feedback_and_spend_their_own_line(settings, tmp_path, loopback):
    winners = {PROMPTS[0]: STRONG, PROMPTS[1]: WEAK, PROMPTS[2]: "tie"}
    loopback.config.judge_verdicts = {p: winners.get(p, STRONG if i % 2 else WEAK) for i, p in enumerate(PROMPTS)}
    sf, result, _ = submit_and_run(settings, write_batch(tmp_path / "b.jsonl", PROMPTS), strong_fraction=0.0,
                                   shadow_fraction=1.0, judge="pair")  # the runner judges once the job completes
    by_prompt = {i.prompt: i for i in items(sf, result.job_id)}
    with sf() as session:
        rows = {r.item_id: r for r in session.scalars(select(Feedback))}
        judgments = list(session.scalars(select(Judgment)))
    assert len(judgments) == len(PROMPTS) and {j.status for j in judgments} == {JudgmentStatus.JUDGED}
    assert judge_calls(loopback.base_url) == 2 * len(PROMPTS)  # both orders, once each
    expected = {STRONG: 1.0, WEAK: 0.0, "tie": 0.5}
    for prompt, winner in loopback.config.judge_verdicts.items():
        row = rows[by_prompt[prompt].id]
        assert (row.source, row.kind, row.value) == ("judge", "prefer", expected[winner])
        assert (row.judge_model, row.prompt_version, row.tenant_id) == (JUDGE, "mtbench-pair-v2", "local")
    first = next(j for j in judgments if j.item_id == by_prompt[PROMPTS[0]].id)
    assert first.verdicts == {"strong_first": "A", "weak_first": "B", "winner": "strong"}
    assert (first.strong_quality, first.weak_quality) == (1.0, 0.0)

    with sf() as session:
        report = spend_report(session, settings, result.job_id)
    judge_line = next(m for m in report.models if m.tier == "judge")
    # every HTTP call the judge answered: a pair is asked twice (both orders), as the server counted
    assert judge_line.model == JUDGE and judge_line.calls == 2 * len(PROMPTS) == judge_calls(loopback.base_url)
    assert judge_line.cost_usd == pytest.approx(sum(j.cost_usd for j in judgments)) and judge_line.cost_usd > 0
    assert report.calls == len(PROMPTS)  # routed calls only: shadow and judge calls are extra spend

    again = judge_job_pairs(sf, settings, result.job_id)  # judged pairs are never judged twice
    assert again.judged_now == 0 and judge_calls(loopback.base_url) == 2 * len(PROMPTS)


def test_unparseable_replies_are_errors_never_labels_and_can_be_retried(settings, tmp_path, loopback):
    loopback.config.judge_unparseable_rate = 1.0
    sf, result, _ = submit_and_run(settings, write_batch(tmp_path / "b.jsonl", PROMPTS[:6]), strong_fraction=0.0,
                                   shadow_fraction=1.0, judge="pair")
    with sf() as session:
        judgments = list(session.scalars(select(Judgment)))
        assert session.scalars(select(Feedback)).first() is None
    assert {j.status for j in judgments} == {JudgmentStatus.ERROR} and len(judgments) == 6
    assert all(j.label is None and j.error.startswith("unparseable: no verdict") for j in judgments)
    assert judge_job_pairs(sf, settings, result.job_id).judged_now == 0  # errors stay errors unless asked
    with sf() as session:
        first = next(m for m in spend_report(session, settings, result.job_id).models if m.tier == "judge")
    assert first.calls == 12 and first.cost_usd > 0  # replies without a verdict are billed all the same
    loopback.config.judge_unparseable_rate = 0.0
    retried = judge_job_pairs(sf, settings, result.job_id, retry_errors=True, mode="grade")
    assert retried.judged_now == 6 and retried.counts == {JudgmentStatus.JUDGED: 6}
    with sf() as session:
        assert len(list(session.scalars(select(Feedback).where(Feedback.source == "judge")))) == 6
        after = next(m for m in spend_report(session, settings, result.job_id).models if m.tier == "judge")
        rows = list(session.scalars(select(Judgment)))
    # the retry adds to what the first attempt spent, never replaces it: every call of both attempts is billed
    assert after.calls == 24 == judge_calls(loopback.base_url)
    retry_cost = sum(j.cost_usd for j in rows) - first.cost_usd
    assert retry_cost > 0 and after.cost_usd == pytest.approx(first.cost_usd + retry_cost)
    assert after.prompt_tokens > first.prompt_tokens and all(j.calls == 4 and j.attempts == 2 for j in rows)


@pytest.mark.slow
def test_a_share_of_unparseable_replies_leaves_the_rest_judged(settings, tmp_path, loopback):
    loopback.config.judge_unparseable_rate = 0.3
    prompts = [f"Item {i}: name a prime above {i * 13}." for i in range(40)]
    sf, _result, _ = submit_and_run(settings, write_batch(tmp_path / "b.jsonl", prompts), strong_fraction=0.0,
                                   shadow_fraction=1.0, judge="pair")
    with sf() as session:
        judgments = list(session.scalars(select(Judgment)))
        feedback = list(session.scalars(select(Feedback)))
    errors = [j for j in judgments if j.status == JudgmentStatus.ERROR]
    assert 0 < len(errors) < 40 and len(feedback) == 40 - len(errors)
    assert {f.item_id for f in feedback}.isdisjoint({j.item_id for j in errors})


def test_a_position_biased_judge_disagrees_with_itself_so_every_pair_is_a_tie(settings, tmp_path, loopback):
    loopback.config.judge_position_bias = 1.0  # always [[A]], whichever answer comes first
    loopback.config.judge_verdicts = {p: STRONG for p in PROMPTS[:5]}
    sf, _result, _ = submit_and_run(settings, write_batch(tmp_path / "b.jsonl", PROMPTS[:5]), strong_fraction=0.0,
                                   shadow_fraction=1.0, judge="pair")
    with sf() as session:
        assert sorted(f.value for f in session.scalars(select(Feedback))) == [0.5] * 5
    assert pair_verdict("A", "B").label == 1.0 and pair_verdict("B", "A").label == 0.0
    assert pair_verdict("A", "A").label == 0.5 and pair_verdict("C", "B").label == 0.5


def test_grade_mode_grades_each_answer_and_the_higher_wins(settings, tmp_path, loopback):
    grades = {(PROMPTS[0], STRONG): 9, (PROMPTS[0], WEAK): 4, (PROMPTS[1], STRONG): 6, (PROMPTS[1], WEAK): 8,
              (PROMPTS[2], STRONG): 7, (PROMPTS[2], WEAK): 7}
    loopback.config.judge_grades = {k: float(v) for k, v in grades.items()}
    sf, result, _ = submit_and_run(settings, write_batch(tmp_path / "b.jsonl", PROMPTS[:3]), strong_fraction=0.0,
                                   shadow_fraction=1.0, judge="grade")
    by_item = {i.id: i.prompt for i in items(sf, result.job_id)}
    with sf() as session:
        got = {by_item[j.item_id]: (j.label, j.strong_quality, j.weak_quality, j.prompt_version)
               for j in session.scalars(select(Judgment))}
    assert got == {PROMPTS[0]: (1.0, 0.9, 0.4, "mtbench-single-v1"), PROMPTS[1]: (0.0, 0.6, 0.8, "mtbench-single-v1"),
                   PROMPTS[2]: (0.5, 0.7, 0.7, "mtbench-single-v1")}
    with sf() as session:
        judge_line = next(m for m in spend_report(session, settings, result.job_id).models if m.tier == "judge")
    assert judge_line.calls == 6 == judge_calls(loopback.base_url)  # grade mode: one call per answer


@BOTH
def test_after_a_crash_only_pairs_left_in_flight_are_judged_again(settings, tmp_path, loopback):
    sf, result, _ = submit_and_run(settings, write_batch(tmp_path / "b.jsonl", PROMPTS), strong_fraction=0.0,
                                   shadow_fraction=1.0)  # no --judge: nothing judged yet
    assert judge_calls(loopback.base_url) == 0
    with sf() as session:
        job = session.get(Job, result.job_id)
        todo = judgeable_ids(session, result.job_id, 60.0)
        # a judge that died: 4 pairs claimed, never recorded
        claimed = claim_pairs(session, job, todo[:4], judge_spec("pair", settings), 60.0)
        session.commit()
    assert len(claimed) == 4
    run_judge(sf, settings, result.job_id, lease_s=60.0)  # within the lease: the dead judge's pairs are left
    assert judge_calls(loopback.base_url) == 2 * (len(PROMPTS) - 4)
    with sf() as session:
        session.execute(update(Judgment).where(Judgment.status == JudgmentStatus.IN_FLIGHT)
                        .values(started_at=utcnow() - timedelta(seconds=120)))
        session.commit()
    done = run_judge(sf, settings, result.job_id, lease_s=60.0)  # past it: those 4, and nothing else
    assert done.judged_now == 4 and judge_calls(loopback.base_url) == 2 * len(PROMPTS)
    with sf() as session:
        assert len(list(session.scalars(select(Feedback)))) == len(PROMPTS)
        assert {j.attempts for j in session.scalars(select(Judgment)) if j.item_id in {p.item_id for p in claimed}
                } == {2}


def test_judge_needs_shadow_pairs_and_a_judge_endpoint(settings, tmp_path):
    batch = write_batch(tmp_path / "b.jsonl", PROMPTS[:2])
    with pytest.raises(InvalidInput, match="give a shadow share"):
        submit(settings, batch, judge="pair")
    with pytest.raises(InvalidInput, match="judge must be one of"):
        submit(settings, batch, judge="vote", shadow_fraction=0.5)
    no_judge = settings.model_copy(update={"judge_base_url": None, "judge_api_key": SecretStr("")})
    with pytest.raises(InvalidInput, match="ROUTEYARD_JUDGE_API_KEY"):
        submit(no_judge, batch, judge="pair", shadow_fraction=0.5)
    sf, result, _ = submit_and_run(settings, batch)
    with pytest.raises(InvalidInput, match="no shadow pairs"):
        judge_job_pairs(sf, settings, result.job_id)


def test_parsing_takes_exactly_one_verdict():
    assert parse_pair("so the answer is [[B]]") == "B"
    assert parse_pair("[[A]] ... final: [[A]]") == "A"
    for bad in ("no verdict", "[[A]] or [[B]]", "", None, "[A]"):
        with pytest.raises(ValueError):
            parse_pair(bad)
    assert parse_grade("Rating: [[7]]") == 7.0 and parse_grade("[[8.5]]") == 8.5
    for bad in ("Rating: 7", "[[11]]", "[[0]]", "[[3]] then [[4]]"):
        with pytest.raises(ValueError):
            parse_grade(bad)


@pytest.mark.slow
def test_cli_judges_a_job_later(settings, tmp_path, loopback, database_url):
    from test_cli import cli_env, routeyard

    _sf, result, _ = submit_and_run(settings, write_batch(tmp_path / "b.jsonl", PROMPTS[:4]), strong_fraction=0.0,
                                   shadow_fraction=1.0)
    env = cli_env(tmp_path / "home", database_url, loopback.base_url, ROUTEYARD_JUDGE_BASE_URL=loopback.base_url,
                  ROUTEYARD_JUDGE_MODEL=JUDGE, ROUTEYARD_JUDGE_API_KEY=TEST_KEY,
                  ROUTEYARD_PRICING=json.dumps({JUDGE: {"input": 5.0, "output": 15.0}}))
    out = routeyard("judge", result.job_id, "--json", env=env)
    assert json.loads(out.stdout)["judged_now"] == 4
    spend = json.loads(routeyard("spend", result.job_id, "--json", env=env).stdout)
    assert [m["calls"] for m in spend["models"] if m["tier"] == "judge"] == [8]  # both orders of 4 pairs


def test_status_shows_the_shadow_pairs_and_how_far_their_judging_got(settings, tmp_path, loopback):
    """`routeyard status` and GET /v1/jobs/{id} say what became of a --judge job's pairs (a trial found neither
    showed the shadow share, the judge mode or the judging)."""
    from fastapi.testclient import TestClient

    from jobs.api.app import create_app
    from jobs.services.results import job_status
    from jobs.services.tenants import create_tenant

    loopback.config.judge_unparseable_rate = 0.5  # some pairs get no verdict: they must show as such
    sf, result, _ = submit_and_run(settings, write_batch(tmp_path / "b.jsonl", PROMPTS), strong_fraction=0.0,
                                   shadow_fraction=1.0, judge="pair")
    with sf() as session:
        judgments = list(session.scalars(select(Judgment).where(Judgment.job_id == result.job_id)))
        view = job_status(session, result.job_id).to_dict()
    judged = sum(j.status == JudgmentStatus.JUDGED for j in judgments)
    assert 0 < judged < len(PROMPTS)  # both kinds, or the test shows nothing
    assert (view["shadow_fraction"], view["judge"]) == (1.0, "pair")
    assert view["judging"] == {"pairs": len(PROMPTS), "judged": judged, "errors": len(PROMPTS) - judged,
                               "in_flight": 0, "unjudged": len(PROMPTS) - judged}

    tenant_id, key = create_tenant(sf, "acme")
    with sf() as session:  # the job was submitted locally: hand it to the tenant, as an API submit would own it
        session.execute(update(Job).where(Job.id == result.job_id).values(tenant_id=tenant_id))
        session.commit()
    with TestClient(create_app(settings)) as client:
        body = client.get(f"/v1/jobs/{result.job_id}", headers={"Authorization": f"Bearer {key}"}).json()
    assert (body["shadow_fraction"], body["judge"]) == (1.0, "pair")
    assert body["judging"] == view["judging"]

    _, plain = submit(settings, write_batch(tmp_path / "p.jsonl", PROMPTS[:3]), strong_fraction=0.0)
    with sf() as session:
        assert job_status(session, plain.job_id).to_dict()["judging"] is None  # no pairs: nothing to show
