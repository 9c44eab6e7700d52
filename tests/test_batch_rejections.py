"""Rejected input lines, whichever front door took the file (the CLI, POST /v1/jobs, /v1/files + /v1/batches):
one parse gives one record per line (its number, custom_id and error code), every error file says the same,
a line is told what its file's form needs, and a Batch API file with no valid line is a failed batch, not a job."""

from __future__ import annotations

import io
import json
import os

import openai
import pytest
from conftest import STRONG, TEST_KEY, WEAK
from fastapi.testclient import TestClient

from db.session import open_database
from jobs.api import create_app
from jobs.cli import app
from jobs.cli.context import run_app
from jobs.services import input_formats
from jobs.services.input_formats import ParsedItem, Rejection, parse_stream
from jobs.services.tenants import create_tenant
from routeyard.testing.inline import InlineExecutor

CHAT = "/v1/chat/completions"
BOM = "\ufeff"


def line(custom_id: str, content: str = "hi", url: str = CHAT, **body: object) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url,
                       "body": {"messages": [{"role": "user", "content": content}], **body}})


def parse(text: str, fmt: str = "jsonl", form: str = "auto") -> list[ParsedItem | Rejection]:
    return list(parse_stream(io.BufferedReader(io.BytesIO(text.encode())), fmt, form=form))  # type: ignore[arg-type]


def rejected(entries: list[ParsedItem | Rejection]) -> dict[int, Rejection]:
    return {e.line_no: e for e in entries if isinstance(e, Rejection)}


# A Batch API file as a new user wrote it: every kind of mistake once, between good lines.
TRIAL = [
    line("ok-1", "What is 2 + 2?"),
    json.dumps({"x": 1}),  # neither form
    line("no-v1", "hello", url="/chat/completions"),
    line("stream-1", "stream it", stream=True),
    BOM + line("bom-1", "from the second file"),  # two files joined, the second saved by Excel
    line("ok-1", "the same custom_id again"),
    '{"custom_id": "broken", "method": ',
    json.dumps({"custom_id": "nan-1", "method": "POST", "url": CHAT,
                "body": {"messages": [{"role": "user", "content": "x"}], "temperature": float("nan")}}),
    json.dumps({"custom_id": "nul\u0000id", "method": "POST", "url": CHAT, "body": {"messages": []}}),
    line("ok-2", "Name a prime number."),
    json.dumps({"custom_id": "text-5", "method": "POST", "url": CHAT,
                "body": {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}}),
    json.dumps({"custom_id": "text-null", "method": "POST", "url": CHAT,
                "body": {"messages": [{"role": "user", "content": [{"type": "text", "text": None}]}]}}),
    line("max-neg", "short", max_tokens=-5),  # OpenAI refuses it; the router must not score it first
    json.dumps({"id": "nop"}),  # neither form, but its id names it
]
# (line, custom_id, code) of each rejected line: what every front door's error file must say
TRIAL_ERRORS = [(2, None, "missing_required_parameter"), (3, "no-v1", "invalid_url"),
                (4, "stream-1", "unsupported_parameter"), (5, "bom-1", "invalid_json_line"),
                (6, "ok-1", "duplicate_custom_id"), (7, None, "invalid_json_line"), (8, "nan-1", "invalid_json_line"),
                (9, None, "invalid_request"), (11, "text-5", "invalid_request"), (12, "text-null", "invalid_request"),
                (13, "max-neg", "invalid_request"), (14, "nop", "missing_required_parameter")]


def test_a_line_of_neither_form_is_told_what_its_files_form_needs():
    batch = rejected(parse("\n".join([json.dumps({"x": 1}), line("a"), json.dumps({"y": 2})]) + "\n"))
    assert set(batch) == {1, 3}  # line 1 waited for line 2 to say the file's form
    for r in batch.values():
        assert r.reason.startswith("not a Batch API line: it needs custom_id, method, url and body")
        assert r.param == "custom_id" and "prompt" not in r.reason
    assert "its fields: 'x'" in batch[1].reason and "its fields: 'y'" in batch[3].reason

    plain = parse('{"x": 1}\n{"id": 7, "prompt": "hi"}\n{"y": 2}\n')
    assert [type(e).__name__ for e in plain] == ["Rejection", "ParsedItem", "Rejection"]  # file order kept
    assert all(r.reason.startswith("field 'prompt': missing; a plain line is") for r in rejected(plain).values())

    [alone] = parse('{"x": 1}\n')
    assert isinstance(alone, Rejection) and "neither input form" in alone.reason
    assert "custom_id, method, url and body" in alone.reason and "a prompt" in alone.reason

    # a Batch API input file (/v1/files, purpose batch) is read as Batch lines only, a plain line too
    as_batch = parse('{"x": 1}\n{"id": 7, "prompt": "hi"}\n', form="batch")
    assert all(isinstance(e, Rejection) and e.reason.startswith("not a Batch API line") for e in as_batch)
    assert "Routeyard's plain form" in as_batch[1].reason and as_batch[1].custom_id == "7"


def test_lines_of_no_form_held_back_stay_in_file_order_and_are_bounded(monkeypatch):
    monkeypatch.setattr(input_formats, "MAX_HELD", 3)
    out = parse("\n".join([json.dumps({"n": i}) for i in range(4)] + ["{oops", line("a")]) + "\n")
    assert [e.line_no for e in out] == [1, 2, 3, 4, 5, 6]
    assert all("neither input form" in out[i].reason for i in range(3))  # released once 3 were held
    assert out[3].reason.startswith("not a Batch API line") and out[4].code == "invalid_json_line"
    assert isinstance(out[5], ParsedItem)


def test_only_openais_chat_url_is_accepted_and_the_message_names_it():
    out = rejected(parse("\n".join([line("a", url="/chat/completions"), line("b", url="/v1/chat/completions/"),
                                    line("c", url="https://api.openai.com/v1/chat/completions"), line("ok")]) + "\n"))
    assert set(out) == {1, 2, 3} and {r.code for r in out.values()} == {"invalid_url"}
    assert "got '/chat/completions'" in out[1].reason and "/v1 prefix" in out[1].reason
    assert all("Routeyard accepts '/v1/chat/completions' only" in r.reason for r in out.values())
    assert [r.custom_id for r in out.values()] == ["a", "b", "c"]


def test_a_byte_order_mark_below_the_first_line_is_named_as_two_files_joined():
    jsonl = parse(BOM + line("a") + "\n" + BOM + line("b") + "\n" + BOM + "\n" + line("c") + "\n")
    assert [e.line_no for e in jsonl] == [1, 2, 4]  # line 1's mark is skipped, a mark alone is a blank line
    assert isinstance(jsonl[0], ParsedItem) and isinstance(jsonl[2], ParsedItem)
    assert "byte-order mark" in jsonl[1].reason and "two files joined" in jsonl[1].reason
    csv = parse(f"{BOM}id,prompt\n1,hi\n{BOM}id,prompt\n2,yo\n", "csv")  # a second header would be a prompt
    assert [(e.line_no, type(e).__name__) for e in csv] == [(2, "ParsedItem"), (3, "Rejection"), (4, "ParsedItem")]
    assert "two files joined" in csv[1].reason


@pytest.fixture
def doors(settings, monkeypatch, capsys, tmp_path):
    """The three front doors on one database: the CLI in this process, /v1/jobs and /v1/batches."""
    settings = settings.model_copy(update={"default_router": "random", "max_retries": 0})
    sf = open_database(settings.resolved_database_url)
    _, key = create_tenant(sf, "acme")
    for name in [k for k in os.environ if k.startswith("ROUTEYARD_") or k == "OPENAI_API_KEY"]:
        monkeypatch.delenv(name)
    env = {"ROUTEYARD_HOME": str(tmp_path / "cli-home"), "ROUTEYARD_DATABASE_URL": settings.resolved_database_url,
           "ROUTEYARD_STRONG_BASE_URL": settings.strong_base_url, "ROUTEYARD_WEAK_BASE_URL": settings.weak_base_url,
           "ROUTEYARD_STRONG_MODEL": STRONG, "ROUTEYARD_WEAK_MODEL": WEAK, "ROUTEYARD_STRONG_API_KEY": TEST_KEY,
           "ROUTEYARD_WEAK_API_KEY": TEST_KEY, "ROUTEYARD_DEFAULT_ROUTER": "random"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def cli(*args: object) -> tuple[int, str, str]:
        try:
            run_app(app, [str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    with TestClient(create_app(settings, executor=InlineExecutor())) as http:
        client = openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=http, max_retries=0)
        yield {"cli": cli, "http": http, "client": client, "auth": {"Authorization": f"Bearer {key}"}}


def error_lines(data: str | bytes) -> list[tuple[int, str | None, str, str]]:
    """(line, custom_id, code, message) of each line of an error file that has no response (rejected lines)."""
    out = []
    for raw in (data.decode() if isinstance(data, bytes) else data).splitlines():
        entry = json.loads(raw)
        if entry["response"] is None:
            message = entry["error"]["message"]
            out.append((int(message.split(":")[0].removeprefix("line ")), entry["custom_id"], entry["error"]["code"],
                        message))
    return out


def test_every_front_door_writes_the_same_error_record_for_each_rejected_line(doors, tmp_path):
    path = tmp_path / "trial.jsonl"
    path.write_text("\n".join(TRIAL) + "\n", encoding="utf-8")
    cli, http, client, auth = doors["cli"], doors["http"], doors["client"], doors["auth"]

    code, out, err = cli("submit", path, "--json")
    assert code == 3, err  # every accepted line answered, but the file had lines that will never be
    submitted = json.loads(out)
    assert [(r["line"], r["custom_id"], r["code"]) for r in submitted["rejected"]] == TRIAL_ERRORS
    assert submitted["counts"] == {"succeeded": 2} and submitted["n_rejected"] == 12
    summary = err.strip().splitlines()[-1]  # the last thing on stderr: a script's log shows it
    assert summary.startswith(f"rejected: 12 input lines of job {submitted['job_id']} not taken")
    assert f"routeyard results {submitted['job_id']} --format openai-errors" in summary
    code, from_cli, _ = cli("results", submitted["job_id"], "--format", "openai-errors")
    assert code == 0

    with path.open("rb") as f:
        posted = http.post("/v1/jobs", headers=auth, files={"file": ("trial.jsonl", f)}).json()
    assert [(r["line"], r["custom_id"], r["code"]) for r in posted["rejected"]] == TRIAL_ERRORS
    from_jobs = http.get(f"/v1/jobs/{posted['job_id']}/results/export", headers=auth,
                         params={"format": "openai-errors"})
    status = http.get(f"/v1/jobs/{posted['job_id']}", headers=auth).json()
    assert [(r["line"], r["custom_id"], r["code"]) for r in status["rejected"]] == TRIAL_ERRORS

    source = client.files.create(file=("trial.jsonl", path.read_bytes()), purpose="batch")
    batch = client.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h")
    batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.request_counts.failed == 12 and batch.request_counts.completed == 2
    from_batches = client.files.content(batch.error_file_id).content

    records = error_lines(from_cli)
    assert [(n, cid, code) for n, cid, code, _ in records] == TRIAL_ERRORS
    assert error_lines(from_jobs.content) == records and error_lines(from_batches) == records
    messages = {n: message for n, _, _, message in records}
    assert "not a Batch API line" in messages[2] and "/v1 prefix" in messages[3]
    assert "two files joined" in messages[5] and "NaN" in messages[8]
    assert "field 'body.messages.0.content.0.text': a text part's text must be a string, got a number" in messages[11]
    assert "got null" in messages[12] and "field 'body.max_tokens'" in messages[13]


def test_a_batch_file_with_no_valid_line_is_a_failed_batch_with_each_lines_error_and_no_job(doors, tmp_path):
    client, http, auth = doors["client"], doors["http"], doors["auth"]
    audio = {"role": "user", "content": [{"type": "text", "text": "transcribe"},
                                         {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}]}
    lines = [json.dumps({"custom_id": "audio-1", "method": "POST", "url": CHAT, "body": {"messages": [audio]}}),
             json.dumps({"x": 1}), line("v", url="/chat/completions")]
    source = client.files.create(file=("bad.jsonl", ("\n".join(lines) + "\n").encode()), purpose="batch")
    # the first line is valid until the budget asks what it may cost: the same parse and checks decide
    created = client.batches.create(input_file_id=source.id, endpoint=CHAT, completion_window="24h",
                                    metadata={"budget_usd": "5"})
    assert created.status == "failed" and created.failed_at and created.request_counts.total == 0
    assert created.output_file_id is None and created.error_file_id is None
    errors = [(e.line, e.code, e.param) for e in created.errors.data]
    assert errors == [(1, "unbounded_cost", None), (2, "missing_required_parameter", "custom_id"),
                      (3, "invalid_url", "url")]
    assert "input_audio" in created.errors.data[0].message and "/v1 prefix" in created.errors.data[2].message

    again = client.batches.retrieve(created.id)  # retrievable, listed, as OpenAI keeps a failed batch
    assert again.status == "failed" and again.errors == created.errors
    assert [b.id for b in client.batches.list().data] == [created.id]
    with pytest.raises(openai.ConflictError, match="status 'failed'"):
        client.batches.cancel(created.id)
    assert http.get("/v1/jobs", headers=auth).json() == []  # nothing was stored as a job


def test_submit_with_rejected_lines_exits_3_and_says_so_last_even_detached(doors, tmp_path):
    cli = doors["cli"]
    path = tmp_path / "some-bad.jsonl"
    path.write_text("\n".join([line("a"), "{oops", line("b")]) + "\n")
    code, out, err = cli("submit", path, "--detach")
    assert code == 0 and "2 items, 1 rejected" in out  # stored, nothing ran yet: not a failure
    job_id = out.split()[1]
    assert "line 2: invalid JSON" in err and err.strip().splitlines()[-1].startswith("rejected: 1 input line of")
    code, out, err = cli("run", job_id)
    assert code == 3 and "completed: succeeded 2" in out and "rejected: 1 input line" in err
    clean = tmp_path / "clean.jsonl"
    clean.write_text(line("c") + "\n")
    code, _, err = cli("submit", clean)
    assert code == 0 and "rejected" not in err


def test_a_csv_quote_never_closed_is_a_rejection_naming_its_line_not_a_prompt_that_swallows_rows(doors, tmp_path):
    out = parse('id,prompt\n1,hi\n2,"unterminated\n3,ok\n', "csv")
    assert [(e.line_no, type(e).__name__) for e in out] == [(2, "ParsedItem"), (3, "Rejection"), (4, "ParsedItem")]
    assert "not closed where it should be (it runs to the end of the file; line 4 was read again" in out[1].reason
    assert out[2].custom_id == "3" and out[2].prompt == "ok"  # the row the quote swallowed, read as its own
    # A stray quote that runs into a later field's quote: only its line is refused; the quoted prompt over two
    # lines after it is read whole.
    out = parse('id,prompt\n1,"stray\n2,ok\n3,"two\nlines"\n4,last\n', "csv")
    assert [(e.line_no, type(e).__name__) for e in out] == [(2, "Rejection"), (3, "ParsedItem"), (4, "ParsedItem"),
                                                            (6, "ParsedItem")]
    assert [e.prompt for e in out[1:]] == ["ok", "two\nlines", "last"]
    assert "lines 3-4 were read again as rows of their own" in out[0].reason
    # A file of stray quotes: the first 100 are refused line by line, the rest record by record (each line read
    # again at most a bounded number of times), and the good row at the end is still read.
    many = parse("prompt\n" + '"x\n' * 300 + "ok\n", "csv")
    assert [e.line_no for e in many[:101]] == list(range(2, 103)) and len(many) == 201
    assert isinstance(many[-1], ParsedItem) and many[-1].prompt == "ok" and many[-1].line_no == 302
    stray = parse('id,prompt\n1,"say "hi" now"\n2,ok\n', "csv")  # a quote inside a quoted field not doubled
    assert isinstance(stray[0], Rejection) and stray[0].line_no == 2 and '""' in stray[0].reason
    assert isinstance(stray[1], ParsedItem) and stray[1].custom_id == "2"

    path = tmp_path / "quote.csv"
    path.write_text('id,prompt\n1,hi\n2,"unterminated\n3,ok\n')
    code, out_json, err = doors["cli"]("submit", path, "--json")
    assert code == 3, err
    submitted = json.loads(out_json)
    assert submitted["counts"] == {"succeeded": 2} and [r["line"] for r in submitted["rejected"]] == [3]


def test_rejections_keep_the_lines_id_and_a_duplicate_is_named_by_its_forms_field():
    plain = rejected(parse('{"id": "a", "prompt": "x"}\n{"id": "nop"}\n' + BOM + '{"id": "b", "prompt": "y"}\n'
                           '{"id": "a", "prompt": "again"}\n'))
    assert [(n, r.custom_id) for n, r in plain.items()] == [(2, "nop"), (3, "b"), (4, "a")]
    assert plain[4].reason == "duplicate id 'a' (first on line 1)" and plain[4].param == "id"
    batch = rejected(parse(line("c1") + "\n" + line("c1") + "\n"))
    assert batch[2].reason == "duplicate custom_id 'c1' (first on line 1)" and batch[2].param == "custom_id"


def test_router_score_exits_3_when_lines_were_rejected_and_scores_the_rest(doors, tmp_path):
    cli = doors["cli"]
    path, scores = tmp_path / "mixed.jsonl", tmp_path / "scores.jsonl"
    bad_text = json.dumps({"custom_id": "t5", "method": "POST", "url": CHAT,
                           "body": {"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}})
    path.write_text("\n".join([line("a"), bad_text, "{oops", line("b")]) + "\n")
    code, _, err = cli("router", "score", "--router", "random", "--input", path, "--output", scores)
    assert code == 3, err
    assert [json.loads(r)["id"] for r in scores.read_text().splitlines()] == ["a", "b"]
    assert "line 2: field 'body.messages.0.content.0.text'" in err and "line 3: invalid JSON" in err
    assert err.strip().splitlines()[-1].startswith("rejected: 2 input lines not scored")
    clean = tmp_path / "clean.jsonl"
    clean.write_text(line("c") + "\n")
    code, _, err = cli("router", "score", "--router", "random", "--input", clean, "--output", scores)
    assert code == 0 and "rejected" not in err


def test_a_second_cancel_says_the_job_was_already_cancelled(doors, tmp_path):
    cli = doors["cli"]
    path = tmp_path / "two.jsonl"
    path.write_text(line("a") + "\n" + line("b") + "\n")
    code, out, _ = cli("submit", path, "--detach")
    job_id = out.split()[1]
    code, out, _ = cli("cancel", job_id)
    assert code == 0 and f"job {job_id} cancelled; 2 items will not be called" in out
    code, out, _ = cli("cancel", job_id)
    assert code == 0 and out.strip() == f"job {job_id} was already cancelled; nothing to cancel"


def test_a_text_part_that_is_no_string_and_a_max_tokens_below_1_are_refused_line_by_line():
    def chat(cid: str, content: object, **body: object) -> str:
        return json.dumps({"custom_id": cid, "method": "POST", "url": CHAT,
                           "body": {"messages": [{"role": "system", "content": "be brief"},
                                                 {"role": "user", "content": content}], **body}})
    lines = [chat("n", [{"type": "text", "text": 5}]), chat("missing", [{"type": "text"}]),
             chat("neg", "hi", max_tokens=-5), chat("zero", "hi", max_completion_tokens=0),
             chat("str", "hi", max_tokens="5"), chat("ok", [{"type": "text", "text": "a"}], max_tokens=9)]
    out = parse("\n".join(lines) + "\n")
    bad = rejected(out)
    assert [(n, r.custom_id, r.param) for n, r in bad.items()] == [
        (1, "n", "body.messages.1.content.0.text"), (2, "missing", "body.messages.1.content.0.text"),
        (3, "neg", "body.max_tokens"), (4, "zero", "body.max_completion_tokens"), (5, "str", "body.max_tokens")]
    assert "got a number" in bad[1].reason and "missing" in bad[2].reason
    assert isinstance(out[5], ParsedItem) and out[5].body["max_tokens"] == 9 and out[5].prompt == "a"
