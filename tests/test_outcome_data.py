"""Outcome data as users have it: directories in any layout, their own column names, clear errors; and the
commands that read it (router train / eval, retrain, schedule retrain)."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from test_cli import cli_env, routeyard

from routers.base import version_of
from routers.data import (
    TRAINING_PROMPTS_FILE,
    load_training_prompts,
    prompt_fingerprints,
    read_data,
    read_routellm_evals,
)
from routeyard.errors import DataError

STRONG_COL, WEAK_COL = "gpt-4o", "llama-3-8b"


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None, delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns or list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def outcome_rows(name: str, n: int, seed: int, p_strong: float = 0.8, p_weak: float = 0.5,
                 strong: str = STRONG_COL, weak: str = WEAK_COL) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"prompt": f"{name} question {i}: what is {i} times {seed + 3}?",
             strong: str(bool(rng.random() < p_strong)), weak: str(bool(rng.random() < p_weak))} for i in range(n)]


def user_layout(root: Path) -> Path:
    """Outcome files the way a user might keep them: nested folders, two files with the same name, a TSV, a
    JSON list, a README, a file of questions without outcomes, and a contamination list deep inside."""
    write_csv(root / "2026" / "math" / "outcomes.csv", outcome_rows("math", 30, 1))
    write_csv(root / "2026" / "code" / "outcomes.csv", outcome_rows("code", 30, 2))
    write_csv(root / "law.tsv", outcome_rows("law", 25, 3), delimiter="\t")
    (root / "extra").mkdir()
    (root / "extra" / "chat.json").write_text(json.dumps(
        [{"prompt": f"chat question {i}", "strong": 1, "weak": 0.25} for i in range(20)]))
    (root / "README.md").write_text("our eval outcomes\n")
    (root / "extra" / "questions.jsonl").write_text(json.dumps({"question": "2+2?", "answer": "4"}) + "\n")
    (root / "extra" / "deep").mkdir()
    (root / "extra" / "deep" / "contaminated_prompts.jsonl").write_text(
        json.dumps({"eval_prompt": "law question 0: what is 0 times 6?", "train_prompt": "x"}) + "\n")
    return root


def test_a_directory_in_any_layout_reads_with_groups_per_file_and_its_contamination_list(tmp_path):
    found = read_data([user_layout(tmp_path / "data")], STRONG_COL, WEAK_COL)
    groups = {}
    for o in found.outcomes:
        groups[o.group] = groups.get(o.group, 0) + 1
    assert groups == {"2026/math/outcomes": 30, "2026/code/outcomes": 30, "law": 24, "chat": 20}
    assert found.dropped == 1 and len(found.files) == 4
    assert {p.name for p, _ in found.skipped} == {"README.md", "questions.jsonl"}
    assert any("questions.jsonl" in note and "'question'" in note for note in found.notes())
    assert {o.weak for o in found.outcomes if o.group == "chat"} == {0.25}
    # The same files named one by one: a file without outcomes is then an error, not skipped.
    with pytest.raises(DataError, match=r"questions\.jsonl: not outcomes.*'question'"):
        read_data([tmp_path / "data" / "law.tsv", tmp_path / "data" / "extra" / "questions.jsonl"],
                  STRONG_COL, WEAK_COL)


def test_the_routellm_layout_keeps_its_groups_and_drops_its_contaminated_prompts(data_dir):
    found = read_data([data_dir])  # RouteLLM's column names are the default
    groups = {o.group for o in found.outcomes}
    assert len(found.outcomes) == 12631 and found.dropped == 17
    assert len(groups) == 48 and "gsm8k" in groups and "mmlu_anatomy" in groups
    assert {p.name for p, _ in found.skipped} == {"test.jsonl", "train.jsonl"}  # GSM8K's questions, no outcomes
    assert sorted(found.outcomes, key=lambda o: (o.group, o.prompt)) == sorted(
        read_routellm_evals(data_dir), key=lambda o: (o.group, o.prompt))


def test_a_missing_column_names_the_columns_wanted_and_those_there(tmp_path):
    path = write_csv(tmp_path / "evals.csv", outcome_rows("x", 3, 0))
    with pytest.raises(DataError) as exc:
        read_data([path])
    message = str(exc.value)
    assert "evals.csv" in message and "'gpt-4-1106-preview' (--strong-column)" in message
    assert "--weak-column" in message and "'gpt-4o'" in message and "'llama-3-8b'" in message
    with pytest.raises(DataError, match=r"no column 'llama-3-70b' \(--weak-column\)"):
        read_data([path], STRONG_COL, "llama-3-70b")
    plain = write_csv(tmp_path / "plain.csv", outcome_rows("y", 3, 0, strong="strong", weak="weak"))
    assert len(read_data([plain]).outcomes) == 3  # columns named strong and weak need no flags
    with pytest.raises(DataError, match=r"missing\.csv: no such file or directory"):
        read_data([tmp_path / "missing.csv"])
    (tmp_path / "binary.csv").write_bytes(b"prompt,strong,weak\n\xff\xfe,1,0\n")
    with pytest.raises(DataError, match=r"binary\.csv: not UTF-8 text"):
        read_data([tmp_path / "binary.csv"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no outcome rows in"):
        read_data([tmp_path / "empty"])


def test_bad_rows_are_errors_naming_file_line_and_column(tmp_path):
    rows = outcome_rows("x", 3, 0)
    rows[0]["prompt"] = "a prompt\nover two lines"
    rows[2][WEAK_COL] = "maybe"
    path = write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(DataError, match=r"bad\.csv, line 5, column 'llama-3-8b': 'maybe' is not a quality"):
        read_data([path], STRONG_COL, WEAK_COL)
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"prompt": "a", "strong": 1, "weak": 0}\n{"prompt": "b", "strong": 1,\n')
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2: not JSON"):
        read_data([jsonl])
    jsonl.write_text('{"prompt": "a", "strong": 1, "weak": 0}\n{"prompt": "b", "strong": 3, "weak": 0}\n')
    with pytest.raises(DataError, match=r"bad\.jsonl, line 2, field 'strong': 3 is not a quality"):
        read_data([jsonl])
    battles = tmp_path / "arena.jsonl"
    battles.write_text(json.dumps({"prompt": "hi", "model_a": "gpt-4-0613", "model_b": "llama-2-70b-chat",
                                   "winner": "model_a"}) + "\n")
    assert read_data([battles]).battles[0].label == 1.0  # training takes battles ...
    with pytest.raises(DataError, match="PGR needs outcomes"):
        read_data([battles], outcomes_only=True)  # ... evaluation cannot


@pytest.mark.slow
def test_router_train_takes_a_directory_of_csvs_with_its_own_column_names(tmp_path, embedding_cache):
    home = tmp_path / "home"
    home.mkdir()
    (home / "cache").symlink_to(embedding_cache, target_is_directory=True)
    env = cli_env(home)
    data = user_layout(tmp_path / "data")
    out = tmp_path / "sw"
    proc = routeyard("router", "train", "--router", "sw_ranking", "--data", str(data), "--out", str(out),
                     "--strong-column", STRONG_COL, "--weak-column", WEAK_COL, env=env)
    assert "104 preference rows from 4 files" in proc.stdout and "skipped" in proc.stderr
    seen = load_training_prompts(out, version_of(out))  # what it trained on, for a fair promotion gate later
    found = read_data([data], STRONG_COL, WEAK_COL)
    assert np.array_equal(seen, prompt_fingerprints(o.prompt for o in found.outcomes))
    bad = routeyard("router", "train", "--router", "sw_ranking", "--data", str(data), "--out", str(tmp_path / "x"),
                    env=env, check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "'gpt-4-1106-preview' (--strong-column)" in " ".join(bad.stderr.split())
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_router_eval_warns_when_the_quality_gap_is_too_small_for_pgr(tmp_path):
    env = cli_env(tmp_path / "home")
    rows = outcome_rows("tied", 200, 5)
    for row in rows:  # the two models equally good: the weak one right exactly where the strong one is
        row[WEAK_COL] = row[STRONG_COL]
    tied = write_csv(tmp_path / "tied" / "evals.csv", rows)
    wide = write_csv(tmp_path / "wide" / "evals.csv", outcome_rows("wide", 200, 6))
    proc = routeyard("router", "eval", "--router", "random", "--outcomes", str(tied.parent), "--out",
                     str(tmp_path / "e1"), "--strong-column", STRONG_COL, "--weak-column", WEAK_COL, env=env)
    text = " ".join(proc.stderr.split())
    assert "warning" in text and "PGR divides by that gap" in text and "mostly noise" in text
    assert (tmp_path / "e1" / "metrics.json").exists()
    proc = routeyard("router", "eval", "--router", "random", "--outcomes", str(wide.parent), "--out",
                     str(tmp_path / "e2"), "--strong-column", STRONG_COL, "--weak-column", WEAK_COL, env=env)
    assert "warning" not in proc.stderr


@pytest.mark.slow
def test_retrain_and_schedule_take_heldout_as_router_eval_does(tmp_path):
    """A directory of CSVs with the users' column names, for base data and held-out set alike."""
    env = cli_env(tmp_path / "home", ROUTEYARD_DEFAULT_ROUTER="random")  # serves before any promotion
    base = write_csv(tmp_path / "base" / "a" / "outcomes.csv", outcome_rows("base", 50, 7))
    heldout = tmp_path / "heldout"
    write_csv(heldout / "x" / "outcomes.csv", outcome_rows("held x", 80, 8))
    write_csv(heldout / "y" / "outcomes.csv", outcome_rows("held y", 80, 9))
    columns = ["--strong-column", STRONG_COL, "--weak-column", WEAK_COL]
    proc = routeyard("retrain", "--router", "random", "--data", str(base.parent.parent), "--heldout", str(heldout),
                     *columns, env=env)
    text = " ".join(proc.stdout.split())
    assert "on 160 held-out prompts" in text and "neither router trained on any held-out prompt" in text
    routeyard("schedule", "retrain", "--every", "0.001", "--router", "random", "--data", str(base),
              "--heldout", str(heldout), *columns, env=env)
    ran = routeyard("schedule", "run-due", env=env)
    assert "on 160 held-out prompts" in " ".join(ran.stdout.split())
    bad = routeyard("schedule", "retrain", "--every", "60", "--heldout", str(heldout), env=env, check=False)
    assert bad.returncode == 2 and "--strong-column" in bad.stderr  # refused when scheduled, not at run time
    # the schedule trained the same router on the same rows as `retrain` did: the same version, stored once
    candidates = list((tmp_path / "home" / "routers").iterdir())
    assert len(candidates) == 1 and (candidates[0] / TRAINING_PROMPTS_FILE).exists()
