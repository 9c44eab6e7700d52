"""One reader per file format of outcome data; `routers/data.py` decides which file is which.

- outcome files, CSV/TSV (a `prompt` column and one quality column per model) or JSON lines / a JSON list
  (`{"prompt", <strong>, <weak>, "group"?}`). A quality is true/false, yes/no, 1/0 or a number in [0, 1];
- Chatbot Arena battles, JSON lines `{"prompt", "model_a", "model_b", "winner"}`;
- contamination lists, JSON lines with `eval_prompt` (RouteLLM's `contaminated_prompts.jsonl`).

Every problem is a `DataError` naming the file and the line (or item) and column (or field). `NotData` says a
file is none of these formats: a directory walk skips such files, a file named on its own is an error.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from routers.rows import Outcome, Preference
from routeyard.errors import DataError

ROUTELLM_STRONG = "gpt-4-1106-preview"
ROUTELLM_WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
_TRUE, _FALSE = ("true", "yes", "correct", "1"), ("false", "no", "incorrect", "0")


class NotData(Exception):
    """A file that holds no outcomes, battles or contamination list (skipped inside a directory)."""


def group_stem(path: Path) -> str:
    """A file's group: its stem, a trailing `_responses` dropped (RouteLLM's `gsm8k_responses.csv` -> gsm8k)."""
    stem = path.stem
    for suffix in ("_responses", "-responses"):
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def _quality(value: Any, where: str) -> float:
    """true/false, yes/no, 1/0, or a number in [0, 1]; anything else is an error naming `where`."""
    if isinstance(value, bool):
        return float(value)
    text = str(value).strip().lower() if value is not None else ""
    if text in _TRUE:
        return 1.0
    if text in _FALSE:
        return 0.0
    try:
        q = float(text)
    except ValueError:
        q = float("nan")
    if not 0.0 <= q <= 1.0:  # also NaN
        shown = value if len(str(value)) <= 40 else str(value)[:40] + "..."
        raise DataError(f"{where}: {shown!r} is not a quality (true/false, 1/0 or a number in [0, 1])")
    return q


def _pick(names: Iterable[str], wanted: str, fallback: str) -> str | None:
    names = list(names)
    return wanted if wanted in names else fallback if fallback in names else None


# --- CSV / TSV ------------------------------------------------------------------------------------------------


def csv_outcomes(path: Path, strong_column: str, weak_column: str, group: str) -> list[Outcome]:
    try:
        return _csv_rows(path, strong_column, weak_column, group)
    except csv.Error as exc:  # e.g. a field past the csv module's size limit, a NUL byte
        raise DataError(f"{path}: not readable as CSV ({exc})") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None


def _csv_rows(path: Path, strong_column: str, weak_column: str, group: str) -> list[Outcome]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        columns = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = columns
        if "prompt" not in columns:
            raise NotData(f"no 'prompt' column (has {columns[:8]})")
        strong, weak = _pick(columns, strong_column, "strong"), _pick(columns, weak_column, "weak")
        if strong is None or weak is None:
            missing = [f"{c!r} ({flag})" for c, found, flag in ((strong_column, strong, "--strong-column"),
                                                                (weak_column, weak, "--weak-column")) if found is None]
            raise DataError(f"{path}: no column {' or '.join(missing)}; its columns are {columns}")
        rows, line = [], reader.line_num
        for record in reader:
            start, line = line + 1, reader.line_num
            if None in record or any(record[c] is None for c in ("prompt", strong, weak)):
                raise DataError(f"{path}, line {start}: {len(columns)} columns expected, the row has a different "
                                "number")
            prompt = record["prompt"]
            if not prompt.strip():
                raise DataError(f"{path}, line {start}, column 'prompt': empty prompt")
            rows.append(Outcome(prompt, _quality(record[strong], f"{path}, line {start}, column {strong!r}"),
                                _quality(record[weak], f"{path}, line {start}, column {weak!r}"), group))
        return rows


# --- JSON lines / a JSON list ---------------------------------------------------------------------------------


def json_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) for each JSON line, or each item of a file that is one JSON list."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text") from None
    if path.suffix.lower() == ".json":
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # JSON lines after all
        if isinstance(whole, list):
            yield from ((f"{path}, item {i}", r) for i, r in enumerate(whole, 1))
            return
        if isinstance(whole, dict):
            yield f"{path}, item 1", whole
            return
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield f"{path}, line {n}", json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}, line {n}: not JSON ({exc.msg})") from None


def json_kind(path: Path) -> str:
    """outcomes, battles or contaminated, from the first record's fields."""
    for where, record in json_records(path):
        if not isinstance(record, dict):
            raise NotData(f"{where} is not a JSON object")
        if "eval_prompt" in record:
            return "contaminated"
        if "model_a" in record:
            return "battles"
        if "prompt" in record:
            return "outcomes"
        raise NotData(f"no 'prompt', 'model_a' or 'eval_prompt' field (has {sorted(record)[:8]})")
    raise NotData("empty")


def json_outcomes(path: Path, strong_column: str, weak_column: str, group: str) -> list[Outcome]:
    rows = []
    for where, r in json_records(path):
        if not isinstance(r, dict):
            raise DataError(f"{where}: not a JSON object")
        strong, weak = _pick(r, strong_column, "strong"), _pick(r, weak_column, "weak")
        missing = [f"{w!r} or {fb!r}" for w, fb, found in ((strong_column, "strong", strong),
                                                          (weak_column, "weak", weak)) if found is None]
        if "prompt" not in r or missing:
            raise DataError(f"{where}: no field {', '.join(['prompt'] * ('prompt' not in r) + missing)}")
        prompt = r["prompt"] if isinstance(r["prompt"], str) else json.dumps(r["prompt"])
        if not prompt.strip():
            raise DataError(f"{where}, field 'prompt': empty prompt")
        rows.append(Outcome(prompt, _quality(r[strong], f"{where}, field {strong!r}"),
                            _quality(r[weak], f"{where}, field {weak!r}"), str(r.get("group", group))))
    return rows


def read_outcomes_csv(path: Path, strong_column: str = ROUTELLM_STRONG, weak_column: str = ROUTELLM_WEAK,
                      group: str | None = None) -> list[Outcome]:
    """One outcome CSV: a `prompt` column and one quality column per model."""
    try:
        return csv_outcomes(path, strong_column, weak_column, group if group is not None else group_stem(path))
    except NotData as exc:
        raise DataError(f"{path}: not an outcome file: {exc}") from None


def read_outcomes_jsonl(path: Path, group: str | None = None, strong_column: str = ROUTELLM_STRONG,
                        weak_column: str = ROUTELLM_WEAK) -> list[Outcome]:
    """`{"prompt": ..., "strong": float, "weak": float}` per line (or the two models' named fields)."""
    return json_outcomes(path, strong_column, weak_column, group if group is not None else group_stem(path))


# --- Contamination lists and arena battles --------------------------------------------------------------------


def read_contaminated(paths: Iterable[Path]) -> set[str]:
    """Prompts that also appear in training data elsewhere (`eval_prompt` of the RouteLLM files)."""
    out: set[str] = set()
    for path in paths:
        for where, record in json_records(path):
            if not isinstance(record, dict) or not isinstance(record.get("eval_prompt"), str):
                raise DataError(f"{where}: no field 'eval_prompt' (a contamination list)")
            out.add(record["eval_prompt"].strip())
    return out


def drop_contaminated(rows: Sequence[Outcome], contaminated: set[str]) -> list[Outcome]:
    return [r for r in rows if r.prompt.strip() not in contaminated]


# Chatbot Arena battles: which models count as strong and weak (RouteLLM's tiers, abridged). Others are skipped.
DEFAULT_TIERS: dict[str, str] = {
    "gpt-4-1106-preview": "strong", "gpt-4-0125-preview": "strong", "gpt-4-turbo-2024-04-09": "strong",
    "gpt-4-0314": "strong", "gpt-4-0613": "strong", "gpt-4o-2024-05-13": "strong",
    "claude-3-opus-20240229": "strong", "mixtral-8x7b-instruct-v0.1": "weak", "gpt-3.5-turbo-0613": "weak",
    "gpt-3.5-turbo-0125": "weak", "llama-2-70b-chat": "weak", "claude-instant-1": "weak",
    "mistral-medium": "weak", "mistral-7b-instruct": "weak",
}
_WINNERS = {"model_a": 1.0, "model_b": 0.0, "tie": 0.5, "tie (bothbad)": 0.5}


def read_arena_battles(path: Path, tiers: dict[str, str] | None = None) -> list[Preference]:
    """Chatbot Arena battles, JSONL `{"prompt", "model_a", "model_b", "winner"}` (winner: model_a, model_b,
    tie, "tie (bothbad)"). A battle counts when one side is a strong-tier model and the other a weak-tier one;
    the label is from the strong model's side."""
    tiers = tiers or DEFAULT_TIERS
    out: list[Preference] = []
    for where, row in json_records(path):
        try:
            a, b, winner = tiers.get(row["model_a"]), tiers.get(row["model_b"]), _WINNERS[row["winner"]]
            prompt = row["prompt"] if isinstance(row["prompt"], str) else json.dumps(row["prompt"])
        except (KeyError, TypeError) as exc:
            raise DataError(f"{where}: not an arena battle (field {exc})") from None
        if {a, b} == {"strong", "weak"}:
            out.append(Preference(prompt, winner if a == "strong" else 1.0 - winner, "arena"))
    return out
