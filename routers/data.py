"""Preference data: the rows every router trains on, and readers that make them.

A row says, for one prompt, how the strong model's answer compared with the weak one's:
label 1.0 strong won, 0.0 weak won (or was as good where it counts), 0.5 tie. With ties at 0.5 a
classifier's expected output is 0.5 + 0.5 * (P(strong wins) - P(weak wins)): monotone in the expected
quality gained by calling the strong model, which is what routing ranks by.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

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


def _truthy(value: str) -> float:
    v = value.strip().lower()
    if v in ("true", "1", "yes"):
        return 1.0
    if v in ("false", "0", "no", ""):
        return 0.0
    return float(v)


def read_outcomes_csv(path: Path, strong_column: str, weak_column: str, group: str | None = None) -> list[Outcome]:
    """The RouteLLM eval format: a `prompt` column and one correctness column per model."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {c for c in ("prompt", strong_column, weak_column) if c not in (reader.fieldnames or [])}
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}; has {reader.fieldnames}")
        name = group if group is not None else path.stem
        return [Outcome(r["prompt"], _truthy(r[strong_column]), _truthy(r[weak_column]), name) for r in reader]


def read_outcomes_jsonl(path: Path, group: str | None = None) -> list[Outcome]:
    """`{"prompt": ..., "strong": float, "weak": float}` per line."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                rows.append(Outcome(str(obj["prompt"]), float(obj["strong"]), float(obj["weak"]),
                                    str(obj.get("group", group if group is not None else path.stem))))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: not an outcome row ({exc})") from exc
    return rows


def read_contaminated(paths: Iterable[Path]) -> set[str]:
    """Prompts that also appear in training data elsewhere (`eval_prompt` of the RouteLLM files)."""
    out: set[str] = set()
    for path in paths:
        with path.open(encoding="utf-8") as f:
            out.update(json.loads(line)["eval_prompt"].strip() for line in f if line.strip())
    return out


def drop_contaminated(rows: Sequence[Outcome], contaminated: set[str]) -> list[Outcome]:
    return [r for r in rows if r.prompt.strip() not in contaminated]


def data_hash(rows: Sequence[Preference]) -> str:
    digest = hashlib.sha256()
    for r in rows:
        qualities = "" if r.strong is None else f"\x00{r.strong}\x00{r.weak}"
        digest.update(f"{r.prompt}\x00{r.label}\x00{r.group}{qualities}\x01".encode())
    return digest.hexdigest()[:16]


ROUTELLM_STRONG = "gpt-4-1106-preview"
ROUTELLM_WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"


def read_routellm_evals(root: Path, benchmarks: Sequence[str] = ("mmlu", "gsm8k")) -> list[Outcome]:
    """The RouteLLM release's per-prompt outcomes (../shared/data/routellm-evals), contaminated prompts dropped.
    Groups: `mmlu_<subject>` per MMLU file, `gsm8k` for GSM8K."""
    rows: list[Outcome] = []
    contaminated: set[str] = set()
    if "mmlu" in benchmarks:
        for path in sorted((root / "mmlu" / "responses").glob("mmlu_*.csv")):
            rows += read_outcomes_csv(path, ROUTELLM_STRONG, ROUTELLM_WEAK)
        contaminated |= read_contaminated([root / "mmlu" / "contaminated_prompts.jsonl"])
    if "gsm8k" in benchmarks:
        rows += read_outcomes_csv(root / "gsm8k" / "gsm8k_responses.csv", ROUTELLM_STRONG, ROUTELLM_WEAK, "gsm8k")
        contaminated |= read_contaminated([root / "gsm8k" / "contaminated_prompts.jsonl"])
    return drop_contaminated(rows, contaminated)


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
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                a, b, winner = tiers.get(row["model_a"]), tiers.get(row["model_b"]), _WINNERS[row["winner"]]
                prompt = row["prompt"] if isinstance(row["prompt"], str) else json.dumps(row["prompt"])
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: not an arena battle ({exc})") from exc
            if {a, b} == {"strong", "weak"}:
                out.append(Preference(prompt, winner if a == "strong" else 1.0 - winner, "arena"))
    return out


def _is_arena(path: Path) -> bool:
    with path.open(encoding="utf-8") as f:
        first = next((line for line in f if line.strip()), "{}")
    return "model_a" in json.loads(first)


def load_preferences(paths: Sequence[Path], strong_column: str = ROUTELLM_STRONG,
                     weak_column: str = ROUTELLM_WEAK) -> list[Preference]:
    """Preference rows from any mix of: a routellm-evals directory, outcome CSVs, outcome JSONL files and
    Chatbot Arena battle JSONL files."""
    rows: list[Preference] = []
    for path in paths:
        if path.is_dir():
            rows += [outcome_to_preference(o) for o in read_routellm_evals(path)]
        elif path.suffix.lower() == ".csv":
            rows += [outcome_to_preference(o) for o in read_outcomes_csv(path, strong_column, weak_column)]
        elif path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
            if _is_arena(path):
                rows += read_arena_battles(path)
            else:
                rows += [outcome_to_preference(o) for o in read_outcomes_jsonl(path)]
        else:
            raise ValueError(f"{path}: expected a directory, .csv or .jsonl of outcomes or arena battles")
    return rows
