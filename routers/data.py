"""Preference data: the rows every router trains on, and readers that make them.

A row says, for one prompt, how the strong model's answer compared with the weak one's:
label 1.0 strong won, 0.0 weak won (or was as good where it counts), 0.5 tie. With ties at 0.5 a
classifier's expected output is 0.5 + 0.5 * (P(strong wins) - P(weak wins)): monotone in the expected
quality gained by calling the strong model, which is what routing ranks by.

Data comes in as users have it (`read_data`): files, or directories of them in any layout, read
recursively. A file is recognised by its content, not its place:

- outcome files, CSV/TSV (a `prompt` column and one quality column per model) or JSON lines / a JSON list
  (`{"prompt", <strong>, <weak>, "group"?}`); the two models' columns are named by the caller
  (`--strong-column/--weak-column`, RouteLLM's names by default; `strong`/`weak` are taken when those are
  absent). A quality is true/false, yes/no, 1/0 or a number in [0, 1];
- Chatbot Arena battles, JSON lines `{"prompt", "model_a", "model_b", "winner"}`;
- contamination lists, JSON lines with `eval_prompt` (RouteLLM's `contaminated_prompts.jsonl`): wherever
  they are in a tree, their prompts are dropped from the outcomes read with them. They are never required.

Inside a directory, files that are none of these (a README, GSM8K's question files) are skipped and
reported; a file named on its own must be one of them. A file's rows form a group named by the file's stem
(a trailing `_responses` dropped: RouteLLM's `mmlu/responses/mmlu_<subject>.csv` -> `mmlu_<subject>`,
`gsm8k/gsm8k_responses.csv` -> `gsm8k`); when two files share a stem, by their path under the directory.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

STRONG_WINS, TIE, WEAK_WINS = 1.0, 0.5, 0.0


@dataclass(frozen=True)
class Preference:
    prompt: str
    label: float  # STRONG_WINS, TIE or WEAK_WINS (or a soft value in between)
    group: str = ""  # where it came from (benchmark, subject): for holding out whole groups
    # Each model's own quality, when the row came from per-prompt outcomes: a tie of two right answers and a
    # tie of two wrong ones then stay apart (routers that can use it model each model's quality).
    strong: float | None = None
    weak: float | None = None


@dataclass(frozen=True)
class Outcome:
    """Per-prompt quality of each model (1/0 for correct/incorrect, or a judge's score scaled to [0, 1])."""

    prompt: str
    strong: float
    weak: float
    group: str = ""


def outcome_to_preference(o: Outcome) -> Preference:
    label = STRONG_WINS if o.strong > o.weak else WEAK_WINS if o.strong < o.weak else TIE
    return Preference(o.prompt, label, o.group, o.strong, o.weak)


ROUTELLM_STRONG = "gpt-4-1106-preview"
ROUTELLM_WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
DATA_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json")
_TRUE, _FALSE = ("true", "yes", "correct", "1"), ("false", "no", "incorrect", "0")


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
        raise ValueError(f"{where}: {shown!r} is not a quality (true/false, 1/0 or a number in [0, 1])")
    return q


def _pick(names: Iterable[str], wanted: str, fallback: str) -> str | None:
    names = list(names)
    return wanted if wanted in names else fallback if fallback in names else None


def _group_stem(path: Path) -> str:
    stem = path.stem
    for suffix in ("_responses", "-responses"):
        if stem.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


class NotData(Exception):
    """A file that holds no outcomes, battles or contamination list (skipped inside a directory)."""


def _csv_outcomes(path: Path, strong_column: str, weak_column: str, group: str) -> list[Outcome]:
    try:
        return _csv_rows(path, strong_column, weak_column, group)
    except csv.Error as exc:  # e.g. a field past the csv module's size limit, a NUL byte
        raise ValueError(f"{path}: not readable as CSV ({exc})") from None


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
            raise ValueError(f"{path}: no column {' or '.join(missing)}; its columns are {columns}")
        rows, line = [], reader.line_num
        for record in reader:
            start, line = line + 1, reader.line_num
            if None in record or any(record[c] is None for c in ("prompt", strong, weak)):
                raise ValueError(f"{path}, line {start}: {len(columns)} columns expected, the row has a different "
                                 "number")
            prompt = record["prompt"]
            if not prompt.strip():
                raise ValueError(f"{path}, line {start}, column 'prompt': empty prompt")
            rows.append(Outcome(prompt, _quality(record[strong], f"{path}, line {start}, column {strong!r}"),
                                _quality(record[weak], f"{path}, line {start}, column {weak!r}"), group))
        return rows


def _json_records(path: Path) -> Iterator[tuple[str, Any]]:
    """(where, record) for each JSON line, or each item of a file that is one JSON list."""
    text = path.read_text(encoding="utf-8-sig")
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
            raise ValueError(f"{path}, line {n}: not JSON ({exc.msg})") from None


def _json_kind(path: Path) -> str:
    """outcomes, battles or contaminated, from the first record's fields."""
    for where, record in _json_records(path):
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


def _json_outcomes(path: Path, strong_column: str, weak_column: str, group: str) -> list[Outcome]:
    rows = []
    for where, r in _json_records(path):
        if not isinstance(r, dict):
            raise ValueError(f"{where}: not a JSON object")
        strong, weak = _pick(r, strong_column, "strong"), _pick(r, weak_column, "weak")
        missing = [f"{w!r} or {fb!r}" for w, fb, found in ((strong_column, "strong", strong),
                                                          (weak_column, "weak", weak)) if found is None]
        if "prompt" not in r or missing:
            raise ValueError(f"{where}: no field {', '.join(['prompt'] * ('prompt' not in r) + missing)}")
        prompt = r["prompt"] if isinstance(r["prompt"], str) else json.dumps(r["prompt"])
        if not prompt.strip():
            raise ValueError(f"{where}, field 'prompt': empty prompt")
        rows.append(Outcome(prompt, _quality(r[strong], f"{where}, field {strong!r}"),
                            _quality(r[weak], f"{where}, field {weak!r}"), str(r.get("group", group))))
    return rows


def read_outcomes_csv(path: Path, strong_column: str = ROUTELLM_STRONG, weak_column: str = ROUTELLM_WEAK,
                      group: str | None = None) -> list[Outcome]:
    """One outcome CSV: a `prompt` column and one quality column per model."""
    try:
        return _csv_outcomes(path, strong_column, weak_column, group if group is not None else _group_stem(path))
    except NotData as exc:
        raise ValueError(f"{path}: not an outcome file: {exc}") from None


def read_outcomes_jsonl(path: Path, group: str | None = None, strong_column: str = ROUTELLM_STRONG,
                        weak_column: str = ROUTELLM_WEAK) -> list[Outcome]:
    """`{"prompt": ..., "strong": float, "weak": float}` per line (or the two models' named fields)."""
    return _json_outcomes(path, strong_column, weak_column, group if group is not None else _group_stem(path))


def read_contaminated(paths: Iterable[Path]) -> set[str]:
    """Prompts that also appear in training data elsewhere (`eval_prompt` of the RouteLLM files)."""
    out: set[str] = set()
    for path in paths:
        for where, record in _json_records(path):
            if not isinstance(record, dict) or not isinstance(record.get("eval_prompt"), str):
                raise ValueError(f"{where}: no field 'eval_prompt' (a contamination list)")
            out.add(record["eval_prompt"].strip())
    return out


def drop_contaminated(rows: Sequence[Outcome], contaminated: set[str]) -> list[Outcome]:
    return [r for r in rows if r.prompt.strip() not in contaminated]


def data_hash(rows: Sequence[Preference]) -> str:
    digest = hashlib.sha256()
    for r in rows:
        qualities = "" if r.strong is None else f"\x00{r.strong}\x00{r.weak}"
        digest.update(f"{r.prompt}\x00{r.label}\x00{r.group}{qualities}\x01".encode())
    return digest.hexdigest()[:16]


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
    for where, row in _json_records(path):
        try:
            a, b, winner = tiers.get(row["model_a"]), tiers.get(row["model_b"]), _WINNERS[row["winner"]]
            prompt = row["prompt"] if isinstance(row["prompt"], str) else json.dumps(row["prompt"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{where}: not an arena battle (field {exc})") from None
        if {a, b} == {"strong", "weak"}:
            out.append(Preference(prompt, winner if a == "strong" else 1.0 - winner, "arena"))
    return out


@dataclass
class DataRead:
    """What `read_data` found: outcome rows, battle rows, and what it skipped or dropped."""

    outcomes: list[Outcome] = field(default_factory=list)
    battles: list[Preference] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)  # read as outcomes or battles
    contamination_files: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why) inside directories
    dropped: int = 0  # outcome rows dropped as contaminated

    def preferences(self) -> list[Preference]:
        return [outcome_to_preference(o) for o in self.outcomes] + self.battles

    def notes(self) -> list[str]:
        """Plain lines on what was left out, for the user."""
        out = []
        if self.dropped:
            out.append(f"dropped {self.dropped} contaminated prompts (listed in "
                       f"{', '.join(str(p) for p in self.contamination_files)})")
        for path, why in self.skipped[:10]:
            out.append(f"skipped {path}: {why}")
        if len(self.skipped) > 10:
            out.append(f"... and {len(self.skipped) - 10} more files skipped")
        return out


def _files(path: Path) -> list[tuple[Path, Path]]:
    """(file, the directory it was found under, or its parent) for a path; directories recursively, hidden
    files and folders left out, in path order."""
    if not path.is_dir():
        return [(path, path.parent)]
    return [(p, path) for p in sorted(path.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)]


def read_data(paths: Sequence[Path], strong_column: str = ROUTELLM_STRONG, weak_column: str = ROUTELLM_WEAK,
              contaminated: Sequence[Path] = (), outcomes_only: bool = False) -> DataRead:
    """Every outcome and battle under `paths` (files or directories in any layout), contaminated prompts
    dropped. `outcomes_only` (evaluation, held-out sets): battles are an error, since PGR needs each model's
    quality per prompt. Bad rows are errors naming the file, line and column; no rows at all is an error."""
    found = DataRead(contamination_files=list(contaminated))
    tables: list[tuple[Path, Path, str]] = []  # (file, root, kind)
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file or directory")
        for file, root in _files(path):
            inside = path.is_dir()
            if file.suffix.lower() not in DATA_SUFFIXES:
                if not inside:
                    raise ValueError(f"{file}: expected a directory, or a {'/'.join(DATA_SUFFIXES)} file of outcomes "
                                     "or arena battles")
                found.skipped.append((file, f"not one of {', '.join(DATA_SUFFIXES)}"))
                continue
            try:
                kind = "outcomes" if file.suffix.lower() in (".csv", ".tsv") else _json_kind(file)
            except NotData as exc:
                if not inside:
                    raise ValueError(f"{file}: not outcomes, arena battles or a contamination list: {exc}") from None
                found.skipped.append((file, f"not outcomes: {exc}"))
                continue
            if kind == "contaminated":
                found.contamination_files.append(file)
            elif kind == "battles" and outcomes_only:
                raise ValueError(f"{file}: arena battles say which answer won, not each model's quality; PGR needs "
                                 "outcomes (a prompt and one quality per model)")
            else:
                tables.append((file, root, kind))
    stems = Counter(_group_stem(f) for f, _, kind in tables if kind == "outcomes")
    for file, root, kind in tables:
        if kind == "battles":
            found.battles += read_arena_battles(file)
            found.files.append(file)
            continue
        group = _group_stem(file)
        if stems[group] > 1:  # e.g. math/outcomes.csv and code/outcomes.csv: math/outcomes, code/outcomes
            under = file.parent.relative_to(root).as_posix() if file.parent != root else file.parent.name
            group = f"{under}/{group}"
        try:
            rows = (_csv_outcomes(file, strong_column, weak_column, group) if file.suffix.lower() in (".csv", ".tsv")
                    else _json_outcomes(file, strong_column, weak_column, group))
        except NotData as exc:
            if not any(file == p for p in paths):
                found.skipped.append((file, f"not outcomes: {exc}"))
                continue
            raise ValueError(f"{file}: not an outcome file: {exc}") from None
        found.outcomes += rows
        found.files.append(file)
    if found.contamination_files:
        before = len(found.outcomes)
        found.outcomes = drop_contaminated(found.outcomes, read_contaminated(found.contamination_files))
        found.dropped = before - len(found.outcomes)
    if not found.outcomes and not found.battles:
        why = "; ".join(f"{p}: {w}" for p, w in found.skipped[:5])
        raise ValueError(f"no outcome rows in {', '.join(str(p) for p in paths)}" + (f" ({why})" if why else ""))
    return found


def read_routellm_evals(root: Path, benchmarks: Sequence[str] = ("mmlu", "gsm8k")) -> list[Outcome]:
    """The RouteLLM release's per-prompt outcomes (../shared/data/routellm-evals), contaminated prompts dropped.
    Groups: `mmlu_<subject>` per MMLU file, `gsm8k` for GSM8K."""
    return read_data([root / b for b in benchmarks], outcomes_only=True).outcomes


def load_preferences(paths: Sequence[Path], strong_column: str = ROUTELLM_STRONG,
                     weak_column: str = ROUTELLM_WEAK) -> list[Preference]:
    """Preference rows from files and directories of outcomes and Chatbot Arena battles (see `read_data`)."""
    return read_data(paths, strong_column, weak_column).preferences()


# --- What a router trained on, so that it is judged only on prompts it never saw -----------------------------
TRAINING_PROMPTS_FILE = "training_prompts.npz"


def prompt_fingerprint(prompt: str) -> int:
    """An 8-byte blake2b hash of the stripped prompt text."""
    return int.from_bytes(hashlib.blake2b(prompt.strip().encode(), digest_size=8).digest(), "big")


def prompt_fingerprints(prompts: Iterable[str]) -> np.ndarray:
    """Sorted, unique fingerprints of prompts (uint64)."""
    return np.unique(np.array([prompt_fingerprint(p) for p in prompts], dtype=np.uint64))


def save_training_prompts(router_dir: Path, prompts: Iterable[str], version: str) -> None:
    """Record, next to a saved router, the fingerprints of the prompts it trained on and its version (a
    router's files replaced later by other weights make the record stale, and it is then ignored)."""
    np.savez(router_dir / TRAINING_PROMPTS_FILE, fingerprints=prompt_fingerprints(prompts), version=np.array(version))


def load_training_prompts(router_dir: Path, version: str) -> np.ndarray | None:
    """The fingerprints of a saved router's training prompts; None when unknown (no record, or a record made
    for other weights than `version`)."""
    file = router_dir / TRAINING_PROMPTS_FILE
    if not file.exists():
        return None
    with np.load(file, allow_pickle=False) as saved:
        if str(saved["version"]) != version:
            return None
        return saved["fingerprints"].astype(np.uint64)


# --- Whether PGR means anything on a set of outcomes ----------------------------------------------------------
MIN_QUALITY_GAP = 0.05  # strong minus weak mean quality below this: PGR divides by (almost) nothing
MIN_PGR_PROMPTS = 100


def pgr_caveats(outcomes: Sequence[Outcome]) -> list[str]:
    """Plain warnings when PGR, APGR and CPT on `outcomes` would be mostly noise."""
    if not outcomes:
        return ["no prompts"]
    strong = float(np.mean([o.strong for o in outcomes]))
    weak = float(np.mean([o.weak for o in outcomes]))
    out = []
    if strong - weak < MIN_QUALITY_GAP:
        out.append(f"the strong model's mean quality ({strong:.3f}) is only {strong - weak:+.3f} above the weak "
                   f"model's ({weak:.3f}) on these {len(outcomes)} prompts. PGR divides by that gap, so PGR, APGR "
                   f"and CPT here are mostly noise (a gap of at least {MIN_QUALITY_GAP} is needed)")
    if len(outcomes) < MIN_PGR_PROMPTS:
        out.append(f"only {len(outcomes)} prompts: PGR, APGR and CPT on so few are noisy (at least "
                   f"{MIN_PGR_PROMPTS} are needed)")
    return out
