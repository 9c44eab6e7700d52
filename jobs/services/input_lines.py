"""One line of a batch file, decoded: the two forms it may be in, and why it is refused.

A Batch API line (`{"custom_id", "method", "url", "body"}`) or a plain line (`{"id", "prompt", ...}`) becomes a
ParsedItem; anything else raises LineError with the field at fault, an OpenAI error code and a reason that says
what the line's form needs. input_formats.py reads files into lines and calls these.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from routeyard.text import shown, unstorable

Shape = Literal["batch", "plain"]  # the form a line is in: an OpenAI Batch API line, or plain
CHAT_URL = "/v1/chat/completions"
# What the OpenAI Batch API takes besides chat completions; each is refused per line, saying why.
OTHER_BATCH_URLS = {
    "/v1/embeddings": "embeddings are not a choice between a strong and a weak model",
    "/v1/completions": "legacy completions have no messages to route on",
    "/v1/responses": "the Responses API is not routed (yet)",
    "/v1/moderations": "moderations are not a choice between a strong and a weak model",
}
MAX_PROMPT_CHARS = 1_000_000
BATCH_EXAMPLE = '{"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions", "body": {"messages": [...]}}'
PLAIN_EXAMPLE = '{"id": "q1", "prompt": "..."}'


# The largest answer length a line may ask for: providers take a 32-bit integer, and no model answers at
# greater length; above it the number is a mistake (and would make a budget's cost bound meaningless).
MAX_TOKENS = 2**31 - 1


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="allow")  # temperature, top_k, ...: passed on to the model as given
    messages: list[Message] = Field(min_length=1)
    model: str | None = None  # ignored: the router picks the model
    # Checked here because every endpoint refuses them only after the call is queued (and billed for the prompt)
    max_tokens: int | None = Field(default=None, gt=0, le=MAX_TOKENS, strict=True)
    max_completion_tokens: int | None = Field(default=None, gt=0, le=MAX_TOKENS, strict=True)


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
    # Strict, as in a Batch API body: `true` or "100" is a mistake to report, not a number to guess at.
    max_tokens: int | None = Field(default=None, gt=0, le=MAX_TOKENS, strict=True)
    temperature: float | None = Field(default=None, ge=0, le=2, strict=True)


@dataclass(frozen=True)
class ParsedItem:
    line_no: int
    custom_id: str
    body: dict[str, Any]  # an OpenAI chat request body without `model`
    prompt: str  # what the router scores: the last user message
    form: Shape = "batch"  # the form of its line, so a duplicate is named by its field (custom_id or id)


@dataclass(frozen=True)
class Rejection:
    line_no: int
    reason: str
    code: str = "invalid_request"  # for the OpenAI Batch API's errors: invalid_json_line, invalid_url, ...
    param: str | None = None  # the field at fault, when there is one ("body.messages.0.role")
    custom_id: str | None = None  # the line's custom_id (a plain line's id), when it had one that can be stored


class LineError(ValueError):
    """Why one line is refused, with an error code and the field at fault."""

    def __init__(self, reason: str, code: str = "invalid_request", param: str | None = None) -> None:
        super().__init__(reason)
        self.code, self.param = code, param


def prompt_of(messages: list[dict[str, Any]]) -> str:
    """The last user message's text (what RouteLLM routes on); check_text_parts has refused a text part whose
    text is not a string."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                texts = (p.get("text") for p in content if p.get("type") == "text")
                return "\n".join(t for t in texts if isinstance(t, str))
    return ""


def check_text_parts(messages: list[dict[str, Any]]) -> None:
    """A content part of type text must carry its text as a string, as OpenAI requires (a number or null would
    otherwise reach the router, or the provider, which refuses the request)."""
    for m, message in enumerate(messages):
        content = message.get("content")
        for n, part in enumerate(content if isinstance(content, list) else []):
            if part.get("type") == "text" and not isinstance(part.get("text"), str):
                where = f"body.messages.{m}.content.{n}.text"
                got = "missing" if "text" not in part else f"got {_json_type(part['text'])}"
                raise LineError(f"field '{where}': a text part's text must be a string, {got}", "invalid_request",
                                where)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", list: "an array", dict: "an object"}.get(
        type(value), type(value).__name__)


def _explain(exc: ValidationError) -> LineError:
    errors = exc.errors()
    missing = [".".join(str(p) for p in e["loc"]) for e in errors if e["type"] == "missing"]
    if len(missing) > 1 and len(missing) == len(errors):  # all of them at once, not one per try
        names = ", ".join(f"'{m}'" for m in missing)
        return LineError(f"fields {names}: required, missing", "missing_required_parameter", missing[0])
    err = errors[0]
    where = ".".join(str(p) for p in err["loc"]) or "line"
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    code = "missing_required_parameter" if err["type"] == "missing" else "invalid_request"
    return LineError(f"field '{where}': {err['msg']}{more}", code, None if where == "line" else where)


def _check_url(url: Any) -> None:
    if url is None or url == CHAT_URL:
        return  # a missing url is the model's to report
    why = OTHER_BATCH_URLS.get(url) if isinstance(url, str) else None
    if why:
        raise LineError(f"field 'url': {url!r} is not routed ({why}); Routeyard routes {CHAT_URL} "
                        "lines only: send this one to the provider directly", "invalid_url", "url")
    got = str(url)[:200]
    if isinstance(url, str) and "/v1" + url in (CHAT_URL, *OTHER_BATCH_URLS):
        why = f"OpenAI's urls carry the /v1 prefix ({'/v1' + url!r}), and Routeyard accepts {CHAT_URL!r} only"
    else:
        why = (f"Routeyard accepts {CHAT_URL!r} only (of the Batch API's other urls, "
               f"{', '.join(OTHER_BATCH_URLS)} go to the provider directly)")
    raise LineError(f"field 'url': expected {CHAT_URL!r}, got {got!r}: {why}", "invalid_url", "url")


def _check_body(body: dict[str, Any]) -> None:
    if body.get("stream"):
        raise LineError("field 'body.stream': streaming is not supported in a batch (each answer is stored "
                        "whole); remove \"stream\" or set it to false", "unsupported_parameter", "body.stream")


def shape_of(obj: dict[str, Any]) -> Shape | None:
    """The form a line's keys say it is in, if they say."""
    if "body" in obj or "custom_id" in obj:
        return "batch"
    if "prompt" in obj:
        return "plain"
    return "batch" if "method" in obj or "url" in obj else None


def fields_of(obj: dict[str, Any]) -> str:
    names = [repr(str(k)[:40]) for k in list(obj)[:6]]
    return ", ".join(names) + (", ..." if len(obj) > 6 else "") if names else "none (an empty object)"


def formless(fields: str, form: Shape | None, plain_line: bool = False) -> LineError:
    """Why a JSON object (its fields listed) is not a line of its file's form (None: no line of the file said)."""
    if form == "batch":
        plain = " (this is Routeyard's plain form, which `routeyard submit` and POST /v1/jobs take)" \
            if plain_line else ""
        return LineError(f"not a Batch API line{plain}: it needs custom_id, method, url and body, as in "
                         f"{BATCH_EXAMPLE}; its fields: {fields}", "missing_required_parameter", "custom_id")
    if form == "plain":
        return LineError(f"field 'prompt': missing; a plain line is {PLAIN_EXAMPLE}, as the file's other lines "
                         f"are; its fields: {fields}", "missing_required_parameter", "prompt")
    return LineError(f"a line in neither input form: a Batch API line needs custom_id, method, url and body "
                     f"({BATCH_EXAMPLE}), a plain line a prompt ({PLAIN_EXAMPLE}); its fields: {fields}",
                     "missing_required_parameter", None)


def from_object(obj: Any, line_no: int, form: Shape) -> ParsedItem:
    """Validate one decoded JSON object as a line of `form`; raises LineError with a clear reason."""
    if not isinstance(obj, dict):
        raise LineError(f"expected a JSON object, got {type(obj).__name__}", "invalid_json_line")
    if shape_of(obj) != form:
        raise formless(fields_of(obj), form, plain_line=shape_of(obj) == "plain")
    try:
        if form == "batch":
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
    check_text_parts(body["messages"])
    prompt = prompt_of(body["messages"])
    if not prompt.strip():
        raise LineError("field 'body.messages': no user message with text to route on", "invalid_request",
                        "body.messages")
    return ParsedItem(line_no, custom_id, body, prompt, form)


def custom_id_of(obj: Any) -> str | None:
    """The custom_id (a plain line's id) of a line that may be rejected, if it is one the database can store."""
    if not isinstance(obj, dict):
        return None
    value = obj["custom_id"] if "custom_id" in obj else obj.get("id")  # a plain line's id, its prompt missing too
    if isinstance(value, bool) or not isinstance(value, str | int) or unstorable(str(value)):
        return None
    return str(value)[:500]


class NotJson:
    """What NaN, Infinity and -Infinity parse to, so the line is refused naming the field that holds one."""

    def __init__(self, text: str) -> None:
        self.text = text


MAX_DEPTH = 64  # arrays and objects inside each other, at most: a chat body needs a handful


def too_deep(field: str | None) -> LineError:
    where = field or "line"
    return LineError(f"field '{where}': nested more than {MAX_DEPTH} levels deep (arrays and objects inside each "
                     "other), the most a line may have", "invalid_json_line", field)


_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}:]')


def load_line(text: str) -> Any:
    """A line's JSON (NaN and Infinity as NotJson, for check_values to name). One nested deeper than Python's
    parser recurses is refused like any line past MAX_DEPTH, naming the top-level field that holds it."""
    try:
        return json.loads(text, parse_constant=NotJson)
    except RecursionError:
        depth, last, field = 0, None, None
        for token in _TOKENS.finditer(text):  # the field is the last key at depth 1 before it passes MAX_DEPTH
            mark = token.group()
            if mark.startswith('"'):
                last = mark
            elif mark == ":" and depth == 1:
                field = last
            elif mark in "[{":
                depth += 1
                if depth > MAX_DEPTH:
                    break
            elif mark in "]}":
                depth -= 1
        name = shown(str(json.loads(field))) if field else None
        raise too_deep(name) from None


def check_values(value: Any) -> None:
    """Refuse what JSON or the database cannot hold, naming the field: NaN/Infinity, a NUL character or a lone
    surrogate in any key or string (PostgreSQL text and jsonb refuse \\u0000, and no driver encodes a lone
    surrogate, so the whole batch would fail to store), and nesting past MAX_DEPTH. Iterative: a line nested
    thousands deep is refused, not a RecursionError."""
    # (container, its depth, its key, its parent's entry): a path is spelled out only for the field refused.
    # Leaves are checked as their container is read, so only containers go on the stack.
    if not isinstance(value, dict | list):
        _check_leaf(value, (value, 0, None, None))
        return
    stack: list[tuple[Any, int, Any, tuple | None]] = [(value, 0, None, None)]
    while stack:
        entry = stack.pop()
        item, depth = entry[0], entry[1]
        if depth >= MAX_DEPTH:
            raise too_deep(_path(entry).split(".")[0] or None)
        nested = []
        for key, child in item.items() if isinstance(item, dict) else enumerate(item):
            if isinstance(key, str) and not _plain(key) and (why := unstorable(key)):
                where = _path((child, depth + 1, key, entry))
                raise LineError(f"field '{where}': its name {why}", "invalid_request", where)
            if isinstance(child, dict | list):
                nested.append((child, depth + 1, key, entry))
            elif not (isinstance(child, str) and _plain(child)) and not isinstance(child, int):
                _check_leaf(child, (child, depth + 1, key, entry))
        stack.extend(reversed(nested))


def _check_leaf(item: Any, entry: tuple) -> None:
    if isinstance(item, str) and (why := unstorable(item)):
        where = _path(entry)
        raise LineError(f"field '{where or 'line'}': {why}", "invalid_request", where or None)
    if isinstance(item, NotJson) or (isinstance(item, float) and not math.isfinite(item)):
        where = _path(entry)
        text = item.text if isinstance(item, NotJson) else repr(item)
        raise LineError(f"field '{where or 'line'}': {text} is not a JSON number (use a finite number or null)",
                        "invalid_json_line", where or None)


def _plain(text: str) -> bool:
    """Surely storable, cheaply: ASCII (a flag CPython keeps) and no NUL."""
    return text.isascii() and "\x00" not in text


def _path(entry: tuple) -> str:
    """The dotted path of a check_values entry ("body.messages.0.content"), its keys escaped (routeyard/text.py)."""
    keys = []
    while entry[3] is not None:
        keys.append(shown(str(entry[2])))
        entry = entry[3]
    return ".".join(reversed(keys))
