"""Outcome data as users have it, read into the rows routers train on (`routers/rows.py`).

Data comes in as users have it (`read_data`): files, or directories of them in any layout, read
recursively. A file is recognised by its content, not its place (the formats: `routers/readers.py`):

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
Every problem with the data is a `DataError` naming the file, line and column.

The names other packages use are all importable from here (`__all__`), wherever they live in routers/.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from routers.evaluate import pgr_caveats
from routers.fingerprints import (
    TRAINING_PROMPTS_FILE,
    load_training_prompts,
    prompt_fingerprint,
    prompt_fingerprints,
    save_training_prompts,
)
from routers.readers import (
    DEFAULT_TIERS,
    ROUTELLM_STRONG,
    ROUTELLM_WEAK,
    NotData,
    csv_outcomes,
    drop_contaminated,
    group_stem,
    json_kind,
    json_outcomes,
    read_arena_battles,
    read_contaminated,
    read_outcomes_csv,
    read_outcomes_jsonl,
)
from routers.rows import STRONG_WINS, TIE, WEAK_WINS, Outcome, Preference, data_hash, outcome_to_preference
from routeyard.errors import DataError

__all__ = [
    "DATA_SUFFIXES", "DEFAULT_TIERS", "ROUTELLM_STRONG", "ROUTELLM_WEAK", "STRONG_WINS", "TIE",
    "TRAINING_PROMPTS_FILE", "WEAK_WINS", "DataRead", "Outcome", "Preference", "data_hash", "drop_contaminated",
    "load_preferences", "load_training_prompts", "outcome_to_preference", "pgr_caveats", "prompt_fingerprint",
    "prompt_fingerprints", "read_arena_battles", "read_contaminated", "read_data", "read_outcomes_csv",
    "read_outcomes_jsonl", "read_routellm_evals", "save_training_prompts",
]

DATA_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json")


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
            raise DataError(f"{path}: no such file or directory")
        for file, root in _files(path):
            inside = path.is_dir()
            if file.suffix.lower() not in DATA_SUFFIXES:
                if not inside:
                    raise DataError(f"{file}: expected a directory, or a {'/'.join(DATA_SUFFIXES)} file of outcomes "
                                    "or arena battles")
                found.skipped.append((file, f"not one of {', '.join(DATA_SUFFIXES)}"))
                continue
            try:
                kind = "outcomes" if file.suffix.lower() in (".csv", ".tsv") else json_kind(file)
            except NotData as exc:
                if not inside:
                    raise DataError(f"{file}: not outcomes, arena battles or a contamination list: {exc}") from None
                found.skipped.append((file, f"not outcomes: {exc}"))
                continue
            if kind == "contaminated":
                found.contamination_files.append(file)
            elif kind == "battles" and outcomes_only:
                raise DataError(f"{file}: arena battles say which answer won, not each model's quality; PGR needs "
                                "outcomes (a prompt and one quality per model)")
            else:
                tables.append((file, root, kind))
    stems = Counter(group_stem(f) for f, _, kind in tables if kind == "outcomes")
    for file, root, kind in tables:
        if kind == "battles":
            found.battles += read_arena_battles(file)
            found.files.append(file)
            continue
        group = group_stem(file)
        if stems[group] > 1:  # e.g. math/outcomes.csv and code/outcomes.csv: math/outcomes, code/outcomes
            under = file.parent.relative_to(root).as_posix() if file.parent != root else file.parent.name
            group = f"{under}/{group}"
        try:
            rows = (csv_outcomes(file, strong_column, weak_column, group) if file.suffix.lower() in (".csv", ".tsv")
                    else json_outcomes(file, strong_column, weak_column, group))
        except NotData as exc:
            if not any(file == p for p in paths):
                found.skipped.append((file, f"not outcomes: {exc}"))
                continue
            raise DataError(f"{file}: not an outcome file: {exc}") from None
        found.outcomes += rows
        found.files.append(file)
    if found.contamination_files:
        before = len(found.outcomes)
        found.outcomes = drop_contaminated(found.outcomes, read_contaminated(found.contamination_files))
        found.dropped = before - len(found.outcomes)
    if not found.outcomes and not found.battles:
        why = "; ".join(f"{p}: {w}" for p, w in found.skipped[:5])
        raise DataError(f"no outcome rows in {', '.join(str(p) for p in paths)}" + (f" ({why})" if why else ""))
    return found


def read_routellm_evals(root: Path, benchmarks: Sequence[str] = ("mmlu", "gsm8k")) -> list[Outcome]:
    """The RouteLLM release's per-prompt outcomes (../shared/data/routellm-evals), contaminated prompts dropped.
    Groups: `mmlu_<subject>` per MMLU file, `gsm8k` for GSM8K."""
    return read_data([root / b for b in benchmarks], outcomes_only=True).outcomes


def load_preferences(paths: Sequence[Path], strong_column: str = ROUTELLM_STRONG,
                     weak_column: str = ROUTELLM_WEAK) -> list[Preference]:
    """Preference rows from files and directories of outcomes and Chatbot Arena battles (see `read_data`)."""
    return read_data(paths, strong_column, weak_column).preferences()
