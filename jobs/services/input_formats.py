"""Reading a batch file: OpenAI Batch API JSONL, plain JSONL (`{"id", "prompt"}`) or CSV (`id`, `prompt`).

Parsing streams: each line yields an accepted item or a rejection naming the line and the field, so one bad
line never sinks the batch and a file of a million lines is never held in memory.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Format = Literal["auto", "jsonl", "csv", "tsv"]
FileFormat = Literal["jsonl", "csv", "tsv"]
CHAT_URLS = ("/v1/chat/completions", "/chat/completions")
MAX_PROMPT_CHARS = 1_000_000


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="allow")  # temperature, max_tokens, ...: passed on to the model as given
    messages: list[Message] = Field(min_length=1)
    model: str | None = None  # ignored: the router picks the model


class BatchLine(BaseModel):
    """One line of the OpenAI Batch API input format."""

    model_config = ConfigDict(extra="forbid")
    custom_id: str = Field(min_length=1, max_length=500)
    method: Literal["POST"]
    url: Literal[CHAT_URLS]  # type: ignore[valid-type]
    body: ChatBody


class PlainLine(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str | int | None = Field(default=None)
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    system: str | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)


@dataclass(frozen=True)
class ParsedItem:
    line_no: int
    custom_id: str
    body: dict[str, Any]  # an OpenAI chat request body without `model`
    prompt: str  # what the router scores: the last user message


@dataclass(frozen=True)
class Rejection:
    line_no: int
    reason: str


def prompt_of(messages: list[dict[str, Any]]) -> str:
    """The last user message's text (what RouteLLM routes on)."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "\n".join(p.get("text", "") for p in content if p.get("type") == "text")
    return ""


def _explain(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "line"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"field '{where}': {err['msg']}{more}"


def _from_object(obj: Any, line_no: int) -> ParsedItem:
    """Validate one decoded JSON object in either JSONL form; raises ValueError with a clear reason."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    try:
        if "body" in obj or "custom_id" in obj:
            line = BatchLine.model_validate(obj)
            body = line.body.model_dump(mode="json", exclude_none=True, exclude={"model"})
            custom_id = line.custom_id
        else:
            plain = PlainLine.model_validate(obj)
            messages = [{"role": "system", "content": plain.system}] if plain.system else []
            messages.append({"role": "user", "content": plain.prompt})
            body = {"messages": messages}
            if plain.max_tokens is not None:
                body["max_tokens"] = plain.max_tokens
            if plain.temperature is not None:
                body["temperature"] = plain.temperature
            custom_id = str(plain.id) if plain.id is not None else f"line-{line_no}"
    except ValidationError as exc:
        raise ValueError(_explain(exc)) from None
    prompt = prompt_of(body["messages"])
    if not prompt.strip():
        raise ValueError("field 'body.messages': no user message with text to route on")
    return ParsedItem(line_no, custom_id, body, prompt)


def _jsonl(stream: io.BufferedReader) -> Iterator[ParsedItem | Rejection]:
    for line_no, raw in enumerate(stream, 1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield Rejection(line_no, f"not UTF-8 text ({exc.reason} at byte {exc.start})")
            continue
        try:
            obj = json.loads(text.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            yield Rejection(line_no, f"invalid JSON: {exc.msg} at column {exc.colno}")
            continue
        try:
            yield _from_object(obj, line_no)
        except ValueError as exc:
            yield Rejection(line_no, str(exc))


def _csv(stream: io.BufferedReader, delimiter: str = ",") -> Iterator[ParsedItem | Rejection]:
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="replace", newline="")
    reader = csv.reader(text, delimiter=delimiter)
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        return
    if "prompt" not in header:
        kind = "TSV" if delimiter == "\t" else "CSV"
        yield Rejection(1, f"{kind} header needs a 'prompt' column; found {header}")
        return
    p_col, id_col = header.index("prompt"), header.index("id") if "id" in header else None
    last_line = reader.line_num
    for row in reader:
        line_no, last_line = last_line + 1, reader.line_num  # the line the record starts on
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield Rejection(line_no, f"expected {len(header)} columns, got {len(row)}")
            continue
        obj: dict[str, Any] = {"prompt": row[p_col]}
        if id_col is not None and row[id_col].strip():
            obj["id"] = row[id_col].strip()
        try:
            yield _from_object(obj, line_no)
        except ValueError as exc:
            yield Rejection(line_no, str(exc))


def detect_format(path: Path, fmt: Format = "auto") -> FileFormat:
    """The format asked for, or the one the file's suffix names (.csv, .tsv; anything else is JSONL)."""
    if fmt != "auto":
        return fmt
    return {".csv": "csv", ".tsv": "tsv"}.get(path.suffix.lower(), "jsonl")  # type: ignore[return-value]


def parse_stream(stream: io.BufferedReader, fmt: FileFormat) -> Iterator[ParsedItem | Rejection]:
    """Accepted items and rejections, in file order. Duplicate ids are rejected (first one wins)."""
    seen: dict[str, int] = {}
    entries = {"csv": lambda: _csv(stream), "tsv": lambda: _csv(stream, "\t"), "jsonl": lambda: _jsonl(stream)}[fmt]()
    for entry in entries:
        if isinstance(entry, ParsedItem):
            first = seen.setdefault(entry.custom_id, entry.line_no)
            if first != entry.line_no:
                yield Rejection(entry.line_no, f"duplicate id {entry.custom_id!r} (first on line {first})")
                continue
        yield entry
