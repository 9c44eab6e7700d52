"""What a --judge job tells its user: how many shadow pairs were judged, why the others got no verdict (grouped by
reason, with a sample), `routeyard judge JOB` exiting 3 while pairs are left without one; and a spend table
whose total row adds up its rows, shadow and judge calls included."""

import json

import pytest
from conftest import TEST_KEY, judge_settings
from jobs_helpers import submit_and_run, write_batch
from test_cli import cli_env, routeyard

from jobs.cli import render
from jobs.cli.context import console
from jobs.services.spend import spend_report

JUDGE = "gpt-4o"  # priced in the maintained list, so the CLI needs no ROUTEYARD_PRICING
PROMPTS = [f"Question {i}: how many primes lie below {10 * i + 7}?" for i in range(10)]


@pytest.fixture
def database_url(tmp_path):
    return f"sqlite:///{tmp_path / 'routeyard.db'}"


@pytest.fixture
def settings(tmp_path, database_url, loopback, embedding_cache):
    return judge_settings(tmp_path / "home", database_url, loopback, JUDGE, embedding_cache)


def test_the_spend_tables_total_row_adds_up_routed_shadow_and_judge_calls(settings, tmp_path):
    _, result, _ = submit_and_run(settings, write_batch(tmp_path / "b.jsonl", PROMPTS), strong_fraction=0.3,
                                  shadow_fraction=1.0, judge="pair")
    from db.session import open_database

    with open_database(settings.resolved_database_url)() as session:
        report = spend_report(session, settings, result.job_id)
    tiers = {m.tier: m.calls for m in report.models}
    assert tiers["shadow"] > 0 and tiers["judge"] > 0  # the rows the total used to leave out
    assert report.calls == tiers["strong"] + tiers["weak"] == len(PROMPTS)
    assert report.all_calls == sum(tiers.values()) > report.calls
    assert report.cost_usd == pytest.approx(sum(m.cost_usd for m in report.models))
    with console.capture() as captured:
        render.spend(report)
    total = next(line for line in captured.get().splitlines() if "total" in line)
    assert str(report.all_calls) in total.split() and f"{report.cost_usd:.4f}" in total
    assert f"{report.calls} routed calls" in captured.get()


@pytest.mark.slow  # four CLI processes
def test_judge_errors_are_reported_by_reason_and_exit_3_until_judged(settings, tmp_path, loopback, database_url):
    loopback.config.judge_unparseable_rate = 1.0  # a judge that never gives a verdict
    env = cli_env(tmp_path / "home", database_url, loopback.base_url, ROUTEYARD_JUDGE_BASE_URL=loopback.base_url,
                  ROUTEYARD_JUDGE_MODEL=JUDGE, ROUTEYARD_JUDGE_API_KEY=TEST_KEY)
    batch = write_batch(tmp_path / "b.jsonl", PROMPTS)
    submitted = routeyard("submit", str(batch), "--strong-fraction", "0", "--shadow", "1", "--judge", env=env)
    assert "are judged once the job completes" in submitted.stdout
    assert f"{len(PROMPTS)} shadow pairs, 0 judged, {len(PROMPTS)} without a verdict" in submitted.stdout
    assert f"{len(PROMPTS)} without a verdict: unparseable: no verdict" in submitted.stderr
    job_id = json.loads(routeyard("jobs", "--json", env=env).stdout)[0]["id"]

    again = routeyard("judge", job_id, env=env, check=False)
    assert again.returncode == 3, again.stderr
    assert "0 pairs judged now" in again.stdout and "unparseable: no verdict [[A]]" in again.stderr
    assert "e.g. req-" in again.stderr and "--retry-errors" in again.stderr
    as_json = routeyard("judge", job_id, "--json", env=env, check=False)
    assert as_json.returncode == 3
    (group,) = json.loads(as_json.stdout)["error_reasons"]
    assert group["count"] == len(PROMPTS) and group["reason"].startswith("unparseable: no verdict")
    assert group["sample_custom_id"].startswith("req-") and "hard to say" in group["sample_reply"]

    loopback.config.judge_unparseable_rate = 0.0  # the judge fixed: every pair gets its verdict
    fixed = routeyard("judge", job_id, "--retry-errors", "--json", env=env, check=False)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    body = json.loads(fixed.stdout)
    assert body["judged_now"] == len(PROMPTS) and body["error_reasons"] == []


def test_the_loopback_judge_gives_the_same_verdict_in_both_orders_and_mostly_a_clear_one(loopback):
    """Asked as worker/judge.py asks, through the real client: an unrecorded pair's verdict names the same answer
    whichever comes first (a judge that picked a position would make every pair a tie)."""
    import openai

    from worker.judge import pair_body, pair_verdict, parse_pair

    loopback.config.judge_models = {JUDGE}
    client = openai.OpenAI(base_url=loopback.base_url, api_key=TEST_KEY, max_retries=0)

    def verdict(question: str, a: str, b: str) -> str:
        reply = client.chat.completions.create(model=JUDGE, **pair_body(question, a, b))
        return parse_pair(reply.choices[0].message.content)

    winners = []
    for i in range(30):
        question, strong, weak = f"Question {i}: name a prime above {i * 7}.", f"[s] {i} long", f"[w] {i} short"
        first, second = verdict(question, strong, weak), verdict(question, weak, strong)
        assert {first, second} in ({"C"}, {"A", "B"}), (question, first, second)  # the same answer wins
        winners.append(pair_verdict(first, second).verdicts["winner"])
    assert winners.count("tie") < 10 and {"strong", "weak"} <= set(winners)  # mostly a clear verdict, both ways
    client.close()


def test_the_loopback_server_started_with_judge_model_answers_that_model_as_a_judge(tmp_path):
    import socket
    import subprocess
    import sys

    import httpx

    from routeyard.testing.services import wait_for
    from worker.judge import parse_pair
    from worker.judge_prompts import grade_body, pair_body, parse_grade

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    recorded = tmp_path / "verdicts.jsonl"
    recorded.write_text(json.dumps({"question": "What is 2 + 2?", "winner": "weak-m"}) + "\n"
                        + json.dumps({"question": "Rate me", "model": "weak-m", "grade": 3}) + "\n")
    server = subprocess.Popen([sys.executable, "-m", "routeyard.testing.loopback", "--port", str(port),
                               "--latency-ms", "1", "--judge-model", "my-judge", "--judge-file", str(recorded),
                               "--judge-unparseable-rate", "0.5"])
    try:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/_stats").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, 60, "the loopback server")
        def ask(body: dict, model: str = "my-judge") -> str:
            return httpx.post(url, json={**body, "model": model}).json()["choices"][0]["message"]["content"]

        replies = [ask(pair_body("What is 2 + 2?", "[strong-m] 4", "[weak-m] 5")) for _ in range(40)]
        read = [r for r in replies if "[[" in r]
        assert 5 < len(read) < 35  # --judge-unparseable-rate 0.5: about half carry no verdict
        assert {parse_pair(r) for r in read} == {"B"}  # --judge-file: the recorded winner, weak-m's answer
        graded = [ask(grade_body("Rate me", "[weak-m] 5")) for _ in range(20)]
        assert {parse_grade(r) for r in graded if "[[" in r} == {3.0}
        plain = ask(pair_body("What is 2 + 2?", "4", "5"), "other")
        assert "[[" not in plain  # any other model answers as a model, with no verdict
    finally:
        server.terminate()
        server.wait(timeout=30)
