"""Reading a batch file: OpenAI Batch API JSONL, plain JSONL (`{"id", "prompt"}`) or CSV (`id`, `prompt`).

Parsing streams: each line yields an accepted item or a rejection naming the line and the field, so one bad
line never sinks the batch and a file of a million lines is never held in memory.

Text is UTF-8 (a byte-order mark, as Excel writes one, is skipped); a line that is not UTF-8, that is longer
than the line limit (ROUTEYARD_MAX_LINE_BYTES), that holds NaN or Infinity (not JSON) or a NUL character (no
database stores one in text) is rejected with its line number and field, and the rest of the file is read.

A Batch API line's body is kept as the user wrote it (nulls included), minus `model`: parameters the openai
SDK does not know (top_k, guided_json, ...) reach the endpoint as they are. Lines the batch cannot answer are
refused here, each with its reason: `"stream": true` (a batch stores whole answers) and urls other than chat
completions (/v1/embeddings, /v1/completions, /v1/responses, ...: Routeyard routes chat prompts only).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Format = Literal["auto", "jsonl", "csv", "tsv"]
FileFormat = Literal["jsonl", "csv", "tsv"]
CHAT_URLS = ("/v1/chat/completions", "/chat/completions")
# What the OpenAI Batch API takes besides chat completions; each is refused per line, saying why.
OTHER_BATCH_URLS = {
    "/v1/embeddings": "embeddings are not a choice between a strong and a weak model",
    "/v1/completions": "legacy completions have no messages to route on",
    "/v1/responses": "the Responses API is not routed (yet)",
    "/v1/moderations": "moderations are not a choice between a strong and a weak model",
}
MAX_PROMPT_CHARS = 1_000_000
MAX_LINE_BYTES = 4 * 1024 * 1024  # a line of the file, at most (ROUTEYARD_MAX_LINE_BYTES): 1M characters of UTF-8 fit
BOM = "\ufeff"


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
    url: str  # checked first, by _check_url, so a wrong endpoint is named before its body's fields
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
    code: str = "invalid_request"  # for the OpenAI Batch API's errors: invalid_json_line, invalid_url, ...
    param: str | None = None  # the field at fault, when there is one ("body.messages.0.role")


class LineError(ValueError):
    """Why one line is refused, with an error code and the field at fault."""

    def __init__(self, reason: str, code: str = "invalid_request", param: str | None = None) -> None:
        super().__init__(reason)
        self.code, self.param = code, param


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


def _explain(exc: ValidationError) -> LineError:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "line"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    code = "missing_required_parameter" if err["type"] == "missing" else "invalid_request"
    return LineError(f"field '{where}': {err['msg']}{more}", code, None if where == "line" else where)


def _check_url(url: Any) -> None:
    if url is None or url in CHAT_URLS:
        return  # a missing url is the model's to report
    why = OTHER_BATCH_URLS.get(url) if isinstance(url, str) else None
    if why:
        raise LineError(f"field 'url': {url!r} is not routed ({why}); Routeyard routes /v1/chat/completions "
                        "lines only: send this one to the provider directly", "invalid_url", "url")
    raise LineError(f"field 'url': expected '/v1/chat/completions', got {url!r}", "invalid_url", "url")


def _check_body(body: dict[str, Any]) -> None:
    if body.get("stream"):
        raise LineError("field 'body.stream': streaming is not supported in a batch (each answer is stored "
                        "whole); remove \"stream\" or set it to false", "unsupported_parameter", "body.stream")


def _from_object(obj: Any, line_no: int) -> ParsedItem:
    """Validate one decoded JSON object in either JSONL form; raises LineError with a clear reason."""
    if not isinstance(obj, dict):
        raise LineError(f"expected a JSON object, got {type(obj).__name__}", "invalid_json_line")
    try:
        if "body" in obj or "custom_id" in obj:
            _check_url(obj.get("url"))
            line = BatchLine.model_validate(obj)
            # as written (a null the user sent stays null), without the model: the router picks it
            body = line.body.model_dump(mode="json", exclude_unset=True, exclude={"model"})
            _check_body(body)
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
        raise _explain(exc) from None
    prompt = prompt_of(body["messages"])
    if not prompt.strip():
        raise LineError("field 'body.messages': no user message with text to route on", "invalid_request",
                        "body.messages")
    return ParsedItem(line_no, custom_id, body, prompt)


class _NotJson:
    """What NaN, Infinity and -Infinity parse to, so the line is refused naming the field that holds one."""

    def __init__(self, text: str) -> None:
        self.text = text


def _check_values(value: Any, where: str = "") -> None:
    """Refuse what JSON or the database cannot hold: NaN/Infinity, and NUL characters (PostgreSQL text and
    jsonb refuse \\u0000, so the whole batch would fail to store)."""
    if isinstance(value, _NotJson) or (isinstance(value, float) and not math.isfinite(value)):
        text = value.text if isinstance(value, _NotJson) else repr(value)
        raise LineError(f"field '{where or 'line'}': {text} is not a JSON number (use a finite number or null)",
                        "invalid_json_line", where or None)
    if isinstance(value, str) and "\x00" in value:
        raise LineError(f"field '{where or 'line'}': contains a NUL character (\\u0000), which cannot be stored; "
                        "remove it", "invalid_request", where or None)
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{where}.{key}" if where else str(key)
            if "\x00" in str(key):
                raise LineError(f"field '{path}': a key contains a NUL character (\\u0000), which cannot be stored",
                                "invalid_request", path)
            _check_values(item, path)
    elif isinstance(value, list):
        for n, item in enumerate(value):
            _check_values(item, f"{where}.{n}" if where else str(n))


def _lines(stream: io.BufferedReader, max_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) of each physical line; None for a line over `max_bytes`, which is skipped without
    ever being held whole."""
    line_no = 0
    while raw := stream.readline(max_bytes + 1):
        line_no += 1
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            while (rest := stream.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield line_no, None
            continue
        yield line_no, raw


def _too_long(max_bytes: int) -> str:
    return f"the line is longer than {max_bytes:,} bytes, the most a line may have (ROUTEYARD_MAX_LINE_BYTES)"


def _decode(raw: bytes, line_no: int) -> str:
    """One line as text; raises LineError naming the byte that is not UTF-8."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LineError(f"not UTF-8 text ({exc.reason} at byte {exc.start + 1} of the line); save the file as "
                        "UTF-8", "invalid_json_line") from None
    return text.removeprefix(BOM) if line_no == 1 else text


def _jsonl(stream: io.BufferedReader, max_bytes: int) -> Iterator[ParsedItem | Rejection]:
    for line_no, raw in _lines(stream, max_bytes):
        if raw is None:
            yield Rejection(line_no, _too_long(max_bytes), "invalid_json_line")
            continue
        try:
            text = _decode(raw, line_no)
            if not text.strip():
                continue
            try:
                obj = json.loads(text.rstrip("\r\n"), parse_constant=_NotJson)
            except json.JSONDecodeError as exc:
                raise LineError(f"invalid JSON: {exc.msg} at column {exc.colno}", "invalid_json_line") from None
            _check_values(obj)
            yield _from_object(obj, line_no)
        except LineError as exc:
            yield Rejection(line_no, str(exc), exc.code, exc.param)


def _csv(stream: io.BufferedReader, max_bytes: int, delimiter: str = ",") -> Iterator[ParsedItem | Rejection]:
    bad: dict[int, str] = {}  # physical line -> why it cannot be read (not UTF-8, too long)

    def text_lines() -> Iterator[str]:
        for line_no, raw in _lines(stream, max_bytes):
            if raw is None:
                bad[line_no] = _too_long(max_bytes)
                yield "\n"  # an empty row in its place, so the rows after it keep their line numbers
                continue
            try:
                yield _decode(raw, line_no)
            except LineError as exc:
                bad[line_no] = str(exc)
                yield raw.decode("utf-8", errors="replace")

    csv.field_size_limit(max(max_bytes, csv.field_size_limit()))
    reader = csv.reader(text_lines(), delimiter=delimiter)
    kind = "TSV" if delimiter == "\t" else "CSV"
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        return
    except csv.Error as exc:
        yield Rejection(1, f"{kind} header: {exc}")
        return
    if bad.get(1):
        yield Rejection(1, f"{kind} header: {bad[1]}")
        return
    if "prompt" not in header:
        yield Rejection(1, f"{kind} header needs a 'prompt' column; found {header}")
        return
    p_col, id_col = header.index("prompt"), header.index("id") if "id" in header else None
    last_line = reader.line_num
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # a NUL byte, a field over the limit: this record only
            line_no, last_line = last_line + 1, reader.line_num
            yield Rejection(line_no, f"{exc}", "invalid_request")
            continue
        line_no, last_line = last_line + 1, reader.line_num  # the line the record starts on
        why = next((bad[n] for n in range(line_no, last_line + 1) if n in bad), None)
        if why:
            yield Rejection(line_no, why, "invalid_request")
            continue
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield Rejection(line_no, f"expected {len(header)} columns, got {len(row)}")
            continue
        obj: dict[str, Any] = {"prompt": row[p_col]}
        if id_col is not None and row[id_col].strip():
            obj["id"] = row[id_col].strip()
        try:
            _check_values(obj)
            yield _from_object(obj, line_no)
        except LineError as exc:
            yield Rejection(line_no, str(exc), exc.code, exc.param)


def detect_format(path: Path, fmt: Format = "auto") -> FileFormat:
    """The format asked for, or the one the file's suffix names (.csv, .tsv; anything else is JSONL)."""
    if fmt != "auto":
        return fmt
    return {".csv": "csv", ".tsv": "tsv"}.get(path.suffix.lower(), "jsonl")  # type: ignore[return-value]


def parse_stream(stream: io.BufferedReader, fmt: FileFormat, max_line_bytes: int = MAX_LINE_BYTES
                 ) -> Iterator[ParsedItem | Rejection]:
    """Accepted items and rejections, in file order. Duplicate ids are rejected (first one wins)."""
    seen: dict[str, int] = {}
    entries = {"csv": lambda: _csv(stream, max_line_bytes), "tsv": lambda: _csv(stream, max_line_bytes, "\t"),
               "jsonl": lambda: _jsonl(stream, max_line_bytes)}[fmt]()
    for entry in entries:
        if isinstance(entry, ParsedItem):
            first = seen.setdefault(entry.custom_id, entry.line_no)
            if first != entry.line_no:
                yield Rejection(entry.line_no, f"duplicate id {entry.custom_id!r} (first on line {first})",
                                "duplicate_custom_id", "custom_id")
                continue
        yield entry
