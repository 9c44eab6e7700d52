"""What a user of the CLI relies on, run in-process: nothing stored that could never run, results that name the
model that was called, reports that mean what they say, files never lost, exit codes and output for scripts."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from conftest import STRONG, TEST_KEY, WEAK
from jobs_helpers import server_stats, write_batch

from jobs.cli import app
from jobs.cli.context import run_app


@pytest.fixture
def cli(monkeypatch, capsys, tmp_path, loopback):
    """Run `routeyard ARGS` in this process with a clean environment pointed at the loopback server."""
    for key in [k for k in os.environ if k.startswith("ROUTEYARD_") or k == "OPENAI_API_KEY"]:
        monkeypatch.delenv(key)
    base = {"ROUTEYARD_HOME": str(tmp_path / "home"), "ROUTEYARD_STRONG_BASE_URL": loopback.base_url,
            "ROUTEYARD_WEAK_BASE_URL": loopback.base_url, "ROUTEYARD_STRONG_MODEL": STRONG,
            "ROUTEYARD_WEAK_MODEL": WEAK, "ROUTEYARD_STRONG_API_KEY": TEST_KEY, "ROUTEYARD_WEAK_API_KEY": TEST_KEY}

    def run(*args: str, env: dict[str, str | None] | None = None) -> tuple[int, str, str]:
        for key, value in {**base, **(env or {})}.items():
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)
        try:
            run_app(app, [str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_a_job_that_could_never_be_called_is_refused_before_anything_is_stored(cli, tmp_path):
    batch = write_batch(tmp_path / "b.jsonl", ["hello"])
    code, _, err = cli("submit", batch, "--router", "random",
                       env={"ROUTEYARD_STRONG_BASE_URL": None, "ROUTEYARD_STRONG_API_KEY": None})
    assert code == 2 and "ROUTEYARD_STRONG_API_KEY" in err and "Traceback" not in err
    code, out, _ = cli("jobs", "--json")
    assert code == 0 and json.loads(out) == []


def test_a_client_that_cannot_be_built_fails_its_calls_with_the_reason(monkeypatch):
    import asyncio

    from pydantic import SecretStr

    from routeyard.settings import Endpoint
    from worker.llm_client import ModelClient

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    client = ModelClient(Endpoint(tier="strong", base_url=None, model="gpt-4o", api_key=SecretStr("")),
                         max_retries=0, timeout_s=1.0, secrets=[])
    result = asyncio.run(client.complete({"messages": [{"role": "user", "content": "hi"}]}))
    assert not result.ok and "ROUTEYARD_STRONG_API_KEY" in (result.error or "")


def test_a_job_is_called_only_with_the_models_it_was_submitted_for(cli, tmp_path, loopback):
    batch = write_batch(tmp_path / "b.jsonl", [f"p{i}" for i in range(6)])
    code, out, _ = cli("submit", batch, "--router", "random", "--detach", "--json")
    job_id = json.loads(out)["job_id"]
    code, _, err = cli("run", job_id, env={"ROUTEYARD_STRONG_MODEL": "gpt-4o"})
    assert code == 2 and "strong model is 'gpt-4-1106-preview'" in err and "'gpt-4o'" in err
    assert server_stats(loopback.base_url)["total"] == 0  # nothing was called with the wrong model
    code, out, _ = cli("run", job_id)
    assert code == 0 and "completed" in out


def test_exit_codes_json_and_progress_lines_for_scripts(cli, tmp_path, loopback):
    good = write_batch(tmp_path / "good.jsonl", [f"p{i}" for i in range(5)])
    code, out, err = cli("submit", good, "--router", "random", "--json")
    assert code == 0 and json.loads(out)["status"] == "completed"
    assert "calling models: 5/5" in err  # progress is logged when stderr is not a terminal
    bad = write_batch(tmp_path / "bad.jsonl", ["fine", f"{loopback.config.always_fail_marker} please"])
    code, out, _ = cli("submit", bad, "--router", "random", "--strong-fraction", "0", "--json",
                       env={"ROUTEYARD_MAX_RETRIES": "0"})
    assert code == 3 and json.loads(out)["counts"] == {"succeeded": 1, "failed": 1}
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("routeyard ")
    code, out, _ = cli("jobs", "--json")
    assert [j["status"] for j in json.loads(out)] == ["completed", "completed"]
    code, out, _ = cli("spend")
    assert STRONG in out and WEAK in out  # whole model names off a terminal, never cut at 80 columns


def test_conflicting_routing_options_are_refused(cli, tmp_path):
    batch = write_batch(tmp_path / "b.jsonl", ["x"])
    code, _, err = cli("submit", batch, "--router", "random", "--budget-usd", "1", "--strong-fraction", "0.5")
    assert code == 2 and "give a strong fraction or a budget, not both" in err
    code, _, err = cli("submit", batch, "--router", "random", "--target-pgr", "1.2")
    assert code == 2 and "(0, 1]" in err


def test_reports_mean_what_they_say(cli, tmp_path):
    a = write_batch(tmp_path / "a.jsonl", [f"a{i}" for i in range(4)])
    b = write_batch(tmp_path / "b.jsonl", [f"b{i}" for i in range(6)])
    assert cli("submit", a, "--router", "random", "--tag", "demo")[0] == 0
    code, out, _ = cli("submit", b, "--router", "random", "--budget-usd", "5", "--json")
    budgeted = json.loads(out)["job_id"]
    code, out, _ = cli("spend", "--tag", "demo", "--json")
    assert json.loads(out)["calls"] == 4  # only the tagged job, not all jobs
    code, _, err = cli("spend", "--csv")
    assert code == 2 and "--by" in err
    code, out, _ = cli("status", budgeted)
    assert "budget $5" in out and "6 of 6 items strong (100%)" in out


def test_tsv_files_are_read_as_tab_separated(cli, tmp_path):
    tsv = tmp_path / "prompts.tsv"
    tsv.write_text("id\tprompt\nq1\tWhat is 2, 3 and 5's sum?\nq2\tName a prime, please.\n")
    code, out, _ = cli("submit", tsv, "--router", "random", "--json")
    assert code == 0 and json.loads(out)["counts"] == {"succeeded": 2}


def test_a_failed_export_never_touches_an_existing_file(cli, tmp_path):
    keep = tmp_path / "keep.jsonl"
    keep.write_text("precious\n")
    code, _, err = cli("results", "job_typo", "-o", keep)
    assert code == 2 and "no job 'job_typo'" in err
    assert keep.read_text() == "precious\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".keep")] == []


def test_bad_settings_and_an_unreachable_broker_are_one_line(cli, tmp_path):
    code, _, err = cli("jobs", env={"ROUTEYARD_PRICING": "{not json"})
    assert code == 2 and "ROUTEYARD_PRICING is not valid JSON" in err and "Traceback" not in err
    batch = write_batch(tmp_path / "b.jsonl", ["x"])
    code, _, err = cli("submit", batch, "--router", "random",
                       env={"ROUTEYARD_PRICING": None, "ROUTEYARD_BROKER_URL": "redis://127.0.0.1:9/0"})
    assert code == 1 and "ROUTEYARD_BROKER_URL" in err and "nothing was stored" in err and "Traceback" not in err
    code, out, _ = cli("jobs", "--json", env={"ROUTEYARD_BROKER_URL": None})
    assert json.loads(out) == []


def test_a_failed_scheduled_retrain_exits_1(cli, tmp_path):
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"prompt": f"q{i}", "strong": 1.0, "weak": float(i % 2)}) + "\n"
                               for i in range(10)))
    code, _, _ = cli("schedule", "retrain", "--every", "1", "--heldout", heldout)
    assert code == 0
    Path(tmp_path / "home").mkdir(exist_ok=True)
    code, out, _ = cli("schedule", "run-due")  # the created time is "now": due after a second
    if "schedule" not in out:
        import time

        time.sleep(1.1)
        code, out, _ = cli("schedule", "run-due")
    assert code == 1 and "failed" in out


def test_check_names_what_is_wrong_before_any_job(cli):
    code, out, _ = cli("check", "--skip-router", "--json")
    assert code == 0 and all(c["ok"] for c in json.loads(out))
    code, out, _ = cli("check", "--skip-router", "--json", env={"ROUTEYARD_WEAK_MODEL": "gpt-4o-mini",
                                                                 "ROUTEYARD_STRONG_API_KEY": "sk-wrong-key-123456"})
    failed = {c["name"]: c["detail"] for c in json.loads(out) if not c["ok"]}
    assert code == 1 and set(failed) == {"strong endpoint", "weak endpoint"}
    assert "refused the key (ROUTEYARD_STRONG_API_KEY)" in failed["strong endpoint"]
    assert "does not serve 'gpt-4o-mini' (ROUTEYARD_WEAK_MODEL)" in failed["weak endpoint"]
    assert "sk-wrong-key" not in out


def test_check_checks_the_judge_endpoint_and_price_when_one_is_configured(cli, loopback):
    code, out, _ = cli("check", "--skip-router", "--json")
    (judge,) = [c for c in json.loads(out) if c["name"].startswith("judge")]
    assert code == 0 and judge["ok"] and "not configured" in judge["detail"]
    judge_env = {"ROUTEYARD_JUDGE_BASE_URL": loopback.base_url, "ROUTEYARD_JUDGE_MODEL": "my-judge",
                 "ROUTEYARD_JUDGE_API_KEY": TEST_KEY}
    code, out, _ = cli("check", "--skip-router", "--json", env=judge_env)
    failed = {c["name"]: c["detail"] for c in json.loads(out) if not c["ok"]}
    assert code == 1 and set(failed) == {"judge endpoint", "judge price"}  # not served there, and no price
    assert "does not serve 'my-judge' (ROUTEYARD_JUDGE_MODEL)" in failed["judge endpoint"]
    assert "my-judge" in failed["judge price"]
    loopback.config.models["my-judge"] = loopback.config.default_profile
    code, out, _ = cli("check", "--skip-router", "--json", env={
        **judge_env, "ROUTEYARD_PRICING": json.dumps({"my-judge": {"input": 5, "output": 15}})})
    checks = {c["name"]: c for c in json.loads(out)}
    assert code == 0 and checks["judge endpoint"]["ok"] and checks["judge price"]["detail"].startswith("$5 in")
    code, out, _ = cli("check", "--skip-router", "--json", env={**judge_env, "ROUTEYARD_JUDGE_API_KEY": "sk-bad-1234"})
    failed = {c["name"]: c["detail"] for c in json.loads(out) if not c["ok"]}
    assert code == 1 and "refused the key (ROUTEYARD_JUDGE_API_KEY)" in failed["judge endpoint"]


def test_a_job_is_billed_at_the_prices_of_its_submission(cli, tmp_path):
    batch = write_batch(tmp_path / "b.jsonl", [f"p{i}" for i in range(4)])
    cheap = json.dumps({STRONG: {"input": 0, "output": 0}, WEAK: {"input": 0, "output": 0}})
    code, out, _ = cli("submit", batch, "--router", "random", "--detach", "--json", env={"ROUTEYARD_PRICING": cheap})
    job_id = json.loads(out)["job_id"]
    code, out, _ = cli("run", job_id, env={"ROUTEYARD_PRICING": None})  # list prices now; the job keeps its own
    assert code == 0
    code, out, _ = cli("spend", job_id, "--json")
    assert json.loads(out)["calls"] == 4 and json.loads(out)["cost_usd"] == 0.0


def test_user_mistakes_are_one_line_and_exit_2(cli, tmp_path, loopback):
    batch = write_batch(tmp_path / "b.jsonl", ["x", "y"])
    for args, message in [
        (("submit", batch, "--router", "nosuch"), "unknown router 'nosuch'"),
        (("submit", batch, "--router", "linear@deadbeef0000"), "no stored router version 'linear@deadbeef0000'"),
        (("submit", batch, "--router", str(tmp_path)), "without config.json"),
        (("submit", tmp_path / "missing.jsonl"), "does not exist"),
        (("submit", batch, "--strong-fraction", "1.5"), "--strong-fraction"),
        # NaN passes no range check, so it must not be reported as "above 1" or taken as a number
        (("submit", batch, "--strong-fraction", "nan"), "--strong-fraction"),
        (("submit", batch, "--shadow", "inf"), "--shadow"),
        (("submit", batch, "--budget-usd", "nan"), "--budget-usd"),
        (("demo", "--latency-scale", "nan"), "--latency-scale"),
        (("schedule", "retrain", "--every", "nan"), "--every"),
        (("schedule", "retrain", "--every", "60", "--margin", "nan"), "margin"),
        (("retrain", "--margin", "nan"), "margin"),
        (("feedback", "job_x", "item", "--rating", "nan"), "rating must be a number from 0 to 1"),
        (("results", "job_x", "-o", batch / "r.jsonl"), ""),
    ]:
        code, _, err = cli(*args)
        assert code == 2 and message in err and "Traceback" not in err and "internal error" not in err, (args, err)
    code, out, _ = cli("jobs", "--json")
    assert json.loads(out) == []  # nothing stored for a router that cannot load, or with options out of range
    code, out, _ = cli("schedule", "list", "--json")
    assert json.loads(out) == []
    code, _, err = cli("jobs", env={"ROUTEYARD_DATABASE_URL": "nonsense"})
    assert code == 2 and "ROUTEYARD_DATABASE_URL" in err
    code, _, err = cli("jobs", env={"ROUTEYARD_DATABASE_URL": None,
                                    "ROUTEYARD_PRICING": '{"gpt-4-1106-preview": {"input": 1}}'})
    assert code == 2 and "ROUTEYARD_PRICING['gpt-4-1106-preview']['output']" in err


def test_settings_a_database_or_endpoint_cannot_work_with_are_named_not_called_bugs(cli, tmp_path):
    for env, setting, message in [
        ({"ROUTEYARD_DATABASE_URL": "mysql://u@h/db"}, "ROUTEYARD_DATABASE_URL", "PostgreSQL or SQLite, not mysql"),
        ({"ROUTEYARD_DATABASE_URL": "postgresql+psycopg://u:hunter2@h:notaport/db"}, "ROUTEYARD_DATABASE_URL",
         "port is not a number"),
        ({"ROUTEYARD_STRONG_BASE_URL": "http://admin:hunter2@127.0.0.1:9/v1"}, "ROUTEYARD_STRONG_BASE_URL",
         "credentials in the URL"),
        ({"ROUTEYARD_DATABASE_URL": f"sqlite:///{tmp_path}/typo/routeyard.db"}, "ROUTEYARD_DATABASE_URL",
         "directory"),
    ]:
        code, out, err = cli("check", env=env)
        assert code == 2 and err.startswith(f"configuration error: {setting}: ") and message in err, err
        assert "hunter2" not in out + err and "internal error" not in err and "Value error" not in err
        cli("jobs", env={key: None for key in env})  # back to the fixture's settings
    assert not (tmp_path / "typo").exists()  # no new, empty database where a typo pointed


def test_results_go_to_a_file_in_the_form_its_name_says_and_never_into_a_directory(cli, tmp_path, loopback):
    batch = write_batch(tmp_path / "b.jsonl", ["x", "y"])
    code, out, _ = cli("submit", batch, "--router", "random", "--json")
    job_id = json.loads(out)["job_id"]
    code, _, err = cli("results", job_id, "-o", tmp_path)
    assert code == 2 and "is a directory" in err and "internal error" not in err
    code, _, _ = cli("results", job_id, "-o", tmp_path / "r.csv")
    assert code == 0 and (tmp_path / "r.csv").read_text().splitlines()[0].startswith("custom_id,line,status,")
    code, _, _ = cli("results", job_id, "-o", tmp_path / "r.csv", "--format", "jsonl")
    assert code == 0 and json.loads((tmp_path / "r.csv").read_text().splitlines()[0])["status"] == "succeeded"
    code, _, err = cli("nosuchcmd")
    assert code == 2 and "No such command 'nosuchcmd'" in err and "`routeyard --help`" in err


def test_a_run_whose_calls_failed_says_why_and_status_keeps_saying_it(cli, tmp_path):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    batch = write_batch(tmp_path / "b.jsonl", ["x", "y", "z"])
    env = {"ROUTEYARD_STRONG_BASE_URL": closed, "ROUTEYARD_MAX_RETRIES": "0"}
    code, out, err = cli("submit", batch, "--router", "random", "--strong-fraction", "1", env=env)
    assert code == 3 and "failed 3" in out
    assert f"3 failed: APIConnectionError: cannot connect to {closed}" in err, err
    job_id = next(w for w in out.split() if w.startswith("job_"))
    code, out, _ = cli("status", job_id, "--json", env=env)
    assert json.loads(out)["common_errors"][0]["items"] == 3
    code, out, _ = cli("status", job_id, env=env)
    assert "3 failed: APIConnectionError: cannot connect to" in out


def test_serving_is_the_same_router_for_every_command_of_the_cli(cli, tmp_path):
    """After a local promotion (what `routeyard retrain` does), score, eval and check use the version submit uses."""
    from db import catalog
    from db.models import LOCAL_TENANT, RouterVersion
    from db.session import open_database
    from routers.base import version_of

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text(json.dumps({"router": "random", "note": "promoted here"}))
    sf = open_database(f"sqlite:///{tmp_path / 'home' / 'routeyard.db'}")  # the CLI's default database
    with sf() as session:
        catalog.add_version(session, RouterVersion(router="random", version=version_of(mine), path=str(mine),
                                                   decision="test", tenant_id=LOCAL_TENANT), serve=True)
        session.commit()
    label = f"random@{version_of(mine)}"
    batch = write_batch(tmp_path / "b.jsonl", ["one", "two"])
    code, out, _ = cli("router", "score", "--input", batch, "--output", tmp_path / "s.jsonl")
    assert code == 0 and f"random {version_of(mine)}" in out, out
    outcomes = tmp_path / "o.jsonl"
    outcomes.write_text("".join(json.dumps({"prompt": f"p{i}", "strong": i % 2, "weak": 0}) + "\n" for i in range(8)))
    code, _, _ = cli("router", "eval", "--outcomes", outcomes, "--out", tmp_path / "ev")
    assert code == 0 and label in (tmp_path / "ev" / "metrics.json").read_text()
    code, out, _ = cli("check")
    assert f"serving -> {label}" in out, out
    code, out, _ = cli("submit", batch, "--detach", "--json")
    job_id = json.loads(out)["job_id"]
    code, out, _ = cli("status", job_id, "--json")
    assert json.loads(out)["router"] == str(mine)  # the job records the promoted version's directory
    # a version named as status and the API name it: `router@version`
    code, out, err = cli("router", "score", "--input", batch, "--output", tmp_path / "s.jsonl", "--router", label)
    assert code == 0 and f"random {version_of(mine)}" in out, err
    code, out, err = cli("router", "rollback", "shipped")
    assert code == 0, err
    code, out, err = cli("router", "rollback", label)
    assert code == 0 and f"now serving random {version_of(mine)}" in out, err
    code, _, err = cli("router", "rollback", f"linear@{version_of(mine)}")  # that version is not a linear router
    assert code == 2 and "no router version" in err
    code, out, _ = cli("status", job_id)
    assert f"router {label};" in out and str(mine) not in out  # as the API names it, not its directory


def test_rollback_says_what_serves_when_the_global_default_has_a_promotion(cli, tmp_path):
    from db import catalog
    from db.models import RouterVersion
    from db.session import open_database
    from routers.base import version_of

    glob = tmp_path / "global"
    glob.mkdir()
    (glob / "config.json").write_text(json.dumps({"router": "random", "note": "the global default's"}))
    sf = open_database(f"sqlite:///{tmp_path / 'home' / 'routeyard.db'}")
    with sf() as session:
        catalog.add_version(session, RouterVersion(router="random", version=version_of(glob), path=str(glob),
                                                   decision="test", tenant_id=None), serve=True)
        session.commit()
    code, out, err = cli("router", "rollback", "shipped")  # local has none of its own: the global default serves it
    assert code == 0 and f"the global default serves it, random@{version_of(glob)}" in out, (out, err)
    assert "now serving linear" not in out
    code, out, _ = cli("check")
    assert f"serving -> random@{version_of(glob)}" in out
    code, out, _ = cli("router", "rollback", "shipped", "--tenant", "global")
    assert code == 0 and "now serving linear" in out
    for args in (("router", "rollback", "shipped"), ("router", "versions")):
        code, _, err = cli(*args, "--tenant", "all")  # `all` is for retrain, not a synonym of local
        assert code == 2 and "--tenant all is for retrain" in err, err


def test_retrain_without_base_data_says_the_candidate_learns_from_feedback_alone(cli, tmp_path):
    code, _, err = cli("schedule", "retrain", "--every", "3600")
    assert code == 0 and "no --data: each candidate learns from the tenant's feedback alone" in err
    heldout = tmp_path / "base"
    heldout.mkdir()
    (heldout / "o.jsonl").write_text("".join(json.dumps({"prompt": f"p{i}", "strong": 1, "weak": 0}) + "\n"
                                             for i in range(4)))
    code, _, err = cli("schedule", "retrain", "--every", "3600", "--data", heldout)
    assert code == 0 and "no --data" not in err


def test_resubmitting_without_the_default_fraction_is_the_same_request(cli, tmp_path):
    batch = write_batch(tmp_path / "b.jsonl", ["x"])
    code, out, _ = cli("submit", batch, "--router", "random", "--strong-fraction", "0.3", "--key", "k", "--json")
    first = json.loads(out)["job_id"]
    code, out, _ = cli("submit", batch, "--router", "random", "--key", "k", "--json")
    assert code == 0 and json.loads(out)["job_id"] == first and not json.loads(out)["created"]


def test_cancelled_and_completed_jobs_say_what_they_are(cli, tmp_path):
    batch = write_batch(tmp_path / "b.jsonl", ["x", "y"])
    code, out, _ = cli("submit", batch, "--router", "random", "--json")
    done = json.loads(out)["job_id"]
    code, out, _ = cli("cancel", done)
    assert code == 0 and "already completed; nothing to cancel" in out
    code, out, _ = cli("submit", batch, "--router", "random", "--detach", "--json", "--key", "other")
    stored = json.loads(out)["job_id"]
    code, out, _ = cli("cancel", stored)
    assert "2 items will not be called" in out
    code, _, err = cli("run", stored)
    assert code == 2 and "was cancelled" in err


def test_results_export_the_batch_output_and_error_files(cli, tmp_path, loopback):
    bad = write_batch(tmp_path / "b.jsonl", ["fine", f"{loopback.config.always_fail_marker} please"])
    code, out, _ = cli("submit", bad, "--router", "random", "--strong-fraction", "0", "--json",
                       env={"ROUTEYARD_MAX_RETRIES": "0"})
    job_id = json.loads(out)["job_id"]
    code, out, _ = cli("results", job_id, "--format", "openai")
    assert code == 0 and [json.loads(line)["custom_id"] for line in out.splitlines()] == ["req-0"]
    code, out, _ = cli("results", job_id, "--format", "openai-errors")
    assert code == 0
    errors = [json.loads(line) for line in out.splitlines()]
    assert [e["custom_id"] for e in errors] == ["req-1"] and errors[0]["response"]["status_code"] == 500


def test_router_train_refuses_a_bad_out_or_router_before_reading_or_training(cli, tmp_path):
    outcomes = tmp_path / "o.jsonl"
    outcomes.write_text("".join(json.dumps({"prompt": f"p{i}", "strong": i % 2, "weak": 0}) + "\n" for i in range(8)))
    afile = tmp_path / "afile"
    afile.write_text("keep")
    for args, message in ((("--out", afile), "a file is there"), (("--out", tmp_path / "r", "--router", "nosuch"),
                                                                   "unknown router 'nosuch'")):
        code, out, err = cli("router", "train", "--data", outcomes, *args)
        assert code == 2 and message in err and "preference rows" not in out, (out, err)
    assert afile.read_text() == "keep"


def test_a_quality_curve_is_not_saved_from_prompts_that_cannot_measure_one(cli, tmp_path):
    """--target-pgr reads a job's strong share off the saved curve: a tie (PGR is 0 everywhere) sent every item of
    a --target-pgr 0.8 job to the strong model."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text(json.dumps({"router": "random"}))
    tie = tmp_path / "tie.jsonl"
    tie.write_text("".join(json.dumps({"prompt": f"p{i}", "strong": 1, "weak": 1}) + "\n" for i in range(200)))
    code, _, err = cli("router", "eval", "--router", mine, "--outcomes", tie, "--out", tmp_path / "ev", "--save-curve")
    assert code == 2 and "--save-curve: not saved" in err and "only +0.000 above" in err, err
    assert not (mine / "quality.json").exists()
    gap = tmp_path / "gap.jsonl"
    gap.write_text("".join(json.dumps({"prompt": f"p{i}", "strong": 1, "weak": i % 2}) + "\n" for i in range(200)))
    for verb in ("saved", "replaced"):  # a stored version's curve is what its jobs read: a second save says so
        code, out, err = cli("router", "eval", "--router", mine, "--outcomes", gap, "--out", tmp_path / "ev",
                             "--save-curve")
        assert code == 0 and f"{verb} the quality curve of" in out and (mine / "quality.json").exists(), err


def test_report_quality_calls_only_the_shipped_router_shipped(cli, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text(json.dumps({"router": "random", "note": "a directory router"}))
    code, _, err = cli("submit", write_batch(tmp_path / "b.jsonl", ["one", "two"]), "--router", mine)
    assert code == 0, err
    code, out, _ = cli("report", "quality")
    row = next(line for line in out.splitlines() if "random@" in line)
    assert "elsewhere" in row and "shipped" not in row, out


def test_router_eval_shows_no_figures_where_the_weak_model_is_as_good(cli, tmp_path):
    rows = tmp_path / "weak_wins.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"p{i}", "strong": 0, "weak": i % 2}) + "\n" for i in range(120)))
    code, out, err = cli("router", "eval", "--router", "random", "--outcomes", rows, "--out", tmp_path / "ev")
    assert code == 0 and "-0.500 above" in err
    table = [line for line in out.splitlines() if line.strip().startswith("│ random")]
    assert table and all("n/a" in line and "0.000" not in line for line in table), out
