"""Reading a batch file: OpenAI Batch API JSONL, plain JSONL (`{"id", "prompt"}`) or CSV (`id`, `prompt`).

Parsing streams: each line yields an accepted item or a rejection naming the line and the field, so one bad
line never sinks the batch and a file of a million lines is never held in memory.

Text is UTF-8 (a byte-order mark, as Excel writes one, is skipped); a line that is not UTF-8, that is longer
than the line limit (ROUTEYARD_MAX_LINE_BYTES), that holds NaN or Infinity (not JSON), a NUL character or a
lone surrogate in a key or value (no database stores one in text), that is nested past MAX_DEPTH, or that starts
with a byte-order mark below the first line (two files joined) is rejected with its line number and field, and
the rest of the file is read. A CSV record is held to the line limit however many lines its quoted fields span.
Every rejection carries the line's custom_id when it had one and an error code, so every front door writes the
same error file.

A JSONL file is in one of two forms, Batch API lines or plain lines. A JSON object that has the keys of
neither is told what its file's form needs: the Batch form for a Batch API input file (/v1/files, purpose
batch), else the form of the file's other lines (until one says, such lines are held back, to at most
MAX_HELD; the order of what is yielded never changes).

A Batch API line's body is kept as the user wrote it (nulls included), minus `model`: parameters the openai
SDK does not know (top_k, guided_json, ...) reach the endpoint as they are. Lines the batch cannot answer are
refused here, each with its reason: `"stream": true` (a batch stores whole answers) and urls other than chat
completions (/v1/embeddings, /v1/completions, /v1/responses, ...: Routeyard routes chat prompts only). The url
is OpenAI's, with its /v1 prefix: `/chat/completions` is refused, as OpenAI refuses it.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jobs.services.input_lines import (
    LineError,
    ParsedItem,
    Rejection,
    Shape,
    check_values,
    custom_id_of,
    fields_of,
    formless,
    from_object,
    load_line,
    shape_of,
)

__all__ = ["FileFormat", "Format", "LineForm", "ParsedItem", "Rejection", "detect_format", "parse_stream"]

Format = Literal["auto", "jsonl", "csv", "tsv"]
FileFormat = Literal["jsonl", "csv", "tsv"]
# "batch": the file is a Batch API input file (it came through /v1/files with purpose batch): every line is read
# as a Batch line. "auto": either form, line by line.
LineForm = Literal["auto", "batch"]
MAX_LINE_BYTES = 4 * 1024 * 1024  # a line of the file, at most (ROUTEYARD_MAX_LINE_BYTES): 1M characters of UTF-8 fit
MAX_HELD = 1000  # lines of no form held back until a line says the file's form
BOM = "\ufeff"


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


def _too_long(max_bytes: int, lines: int = 1) -> str:
    what = "the line"
    if lines != 1:  # 0: a field the reader gave up on, its end not yet read
        what = f"the record (a quoted field spans {lines or 'several'} lines from this one)"
    return f"{what} is longer than {max_bytes:,} bytes, the most a line may have (ROUTEYARD_MAX_LINE_BYTES)"


def _decode(raw: bytes, line_no: int) -> str:
    """One line as text; raises LineError naming the byte that is not UTF-8, or a byte-order mark below line 1."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LineError(f"not UTF-8 text ({exc.reason} at byte {exc.start + 1} of the line); save the file as "
                        "UTF-8", "invalid_json_line") from None
    if line_no == 1 or not text.startswith(BOM):
        return text.removeprefix(BOM)
    if not text[1:].strip():
        return ""  # nothing but the mark: a blank line
    # Read past it, the line would be taken as written, but a mark here means files were joined: say so.
    raise LineError("the line starts with a byte-order mark (U+FEFF, the bytes EF BB BF), which belongs only at the "
                    "start of a file, where Excel and Notepad write it: this file looks like two files joined, the "
                    "second starting here; delete the mark", "invalid_json_line")


@dataclass(frozen=True)
class _Formless:
    """A JSON object of neither form, read before any line said the file's form: its rejection waits for one."""

    line_no: int
    fields: str
    custom_id: str | None

    def rejection(self, form: Shape | None) -> Rejection:
        err = formless(self.fields, form)
        return Rejection(self.line_no, str(err), err.code, err.param, self.custom_id)


def _read_line(line_no: int, raw: bytes | None, max_bytes: int, form: Shape | None,
               strict: bool) -> tuple[ParsedItem | Rejection | _Formless | None, Shape | None]:
    """One line's entry (None: a blank line) and the form its keys say it is in."""
    if raw is None:
        return Rejection(line_no, _too_long(max_bytes), "invalid_json_line"), None
    obj: Any = None
    shape = None
    try:
        text = _decode(raw, line_no)
        if not text.strip():
            return None, None
        try:
            obj = load_line(text.rstrip("\r\n"))
        except json.JSONDecodeError as exc:
            raise LineError(f"invalid JSON: {exc.msg} at column {exc.colno}", "invalid_json_line") from None
        shape = shape_of(obj) if isinstance(obj, dict) else None
        check_values(obj)
        if isinstance(obj, dict) and shape is None and form is None:
            return _Formless(line_no, fields_of(obj), custom_id_of(obj)), None
        return from_object(obj, line_no, "batch" if strict else shape or form or "batch"), shape
    except LineError as exc:
        return Rejection(line_no, str(exc), exc.code, exc.param, custom_id_of(obj) or _custom_id_past_bom(raw)), shape


def _custom_id_past_bom(raw: bytes) -> str | None:
    """The custom_id of a line refused for its byte-order mark alone, read past the mark, so its error record
    names the request (None when the rest is no JSON object either)."""
    if not raw.startswith(BOM.encode()):
        return None
    try:
        return custom_id_of(load_line(raw[3:].decode("utf-8")))
    except ValueError:  # not UTF-8, not JSON or too deep: the line had no custom_id to tell
        return None


def _jsonl(stream: io.BufferedReader, max_bytes: int, line_form: LineForm = "auto"
           ) -> Iterator[ParsedItem | Rejection]:
    form: Shape | None = "batch" if line_form == "batch" else None
    held: list[Rejection | _Formless] = []  # in file order, from the first line of no form until the form is known

    def settle(entries: Iterable[ParsedItem | Rejection | _Formless]) -> Iterator[ParsedItem | Rejection]:
        for entry in entries:
            yield entry.rejection(form) if isinstance(entry, _Formless) else entry

    for line_no, raw in _lines(stream, max_bytes):
        entry, shape = _read_line(line_no, raw, max_bytes, form, line_form == "batch")
        if entry is None:
            continue
        form = form or shape
        if form is None and not isinstance(entry, ParsedItem):
            held.append(entry)
            if len(held) >= MAX_HELD:  # so many lines and none says: those are told of both forms
                yield from settle(held)
                held.clear()
            continue
        yield from settle([*held, entry])
        held.clear()
    yield from settle(held)


# Times one file's rows may be read again after a quote that never closed: each time drops one line, so a file
# of stray quotes ends, but not in quadratic time.
MAX_REREADS = 100


class _Lines:
    """The text lines a csv reader reads, with their physical line numbers: those of the record being read are
    kept, so a record that swallowed the rows after it (a quote never closed) can give them back to be read
    again. An iterator that may go on after it has once run dry (when lines are given back)."""

    def __init__(self, lines: Iterator[tuple[int, str, int]]) -> None:
        self.source = lines  # (line number, text, its size in bytes)
        self.again: list[tuple[int, str, int]] = []  # lines given back, last first
        self.record: list[tuple[int, str, int]] = []  # the lines of the record being read

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        line = self.again.pop() if self.again else next(self.source)
        self.record.append(line)
        return line[1]

    def give_back(self, lines: list[tuple[int, str, int]]) -> None:
        self.again.extend(reversed(lines))

    def reopen_quote(self) -> None:
        """The next line starts inside a quoted field (the reader gave up on one over the field limit): a quote
        put before it makes a fresh reader read it so, and the field's end, where it ends, is read as such."""
        line = self.again.pop() if self.again else next(self.source, None)
        if line is not None:
            self.again.append((line[0], '"' + line[1], line[2]))


def _csv(stream: io.BufferedReader, max_bytes: int, delimiter: str = ",") -> Iterator[ParsedItem | Rejection]:
    bad: dict[int, str] = {}  # physical line -> why it cannot be read (not UTF-8, too long)

    def text_lines() -> Iterator[tuple[int, str, int]]:
        for line_no, raw in _lines(stream, max_bytes):
            if raw is None:
                bad[line_no] = _too_long(max_bytes)
                yield line_no, "\n", 0  # an empty row in its place, so the rows after it keep their line numbers
                continue
            try:
                yield line_no, _decode(raw, line_no), len(raw)
            except LineError as exc:
                bad[line_no] = str(exc)
                yield line_no, raw.decode("utf-8", errors="replace"), len(raw)

    csv.field_size_limit(max(max_bytes, csv.field_size_limit()))
    lines = _Lines(text_lines())
    # strict: a quote never closed is an error at the end of the file, not a prompt that swallows every row after it
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
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
    rereads, skipping = 0, False  # skipping: the rest of a field over the limit, its record refused already
    while True:
        lines.record.clear()
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # a NUL byte, a field over the limit, a stray quote: this record only
            first, last = lines.record[0][0], lines.record[-1][0]
            if "field limit" in str(exc):  # one long prompt: its lines are not rows; the rest is skipped
                if not skipping:
                    yield Rejection(first, _too_long(max_bytes, 0), "invalid_request")
                lines.reopen_quote()
                reader, skipping = csv.reader(lines, delimiter=delimiter, strict=True), True
                continue
            if skipping:
                skipping = False
                continue
            if last > first and rereads < MAX_REREADS:
                # A quote opened on `first` ran over the rows after it, to the end of the file or to a later
                # field's quote: most likely a stray quote, so only its line is refused and the rows after it
                # are read again as rows of their own.
                rereads += 1
                lines.give_back(lines.record[1:])
                reader = csv.reader(lines, delimiter=delimiter, strict=True)
                cause = "it runs to the end of the file" if str(exc) == "unexpected end of data" else str(exc)
                after = f"line {last} was" if last == first + 1 else f"lines {first + 1}-{last} were"
                yield Rejection(first, f"a quoted field opened on this line is not closed where it should be ({cause}; "
                                       f"{after} read again as rows of their own); close the quote (a quote "
                                       "inside a quoted field is written twice: \"\")", "invalid_request")
                continue
            yield Rejection(first, _csv_error(exc, first, last), "invalid_request")
            continue
        if skipping:  # the end of a field over the limit
            skipping = False
            continue
        line_no, last_line = lines.record[0][0], lines.record[-1][0]  # the lines the record spans
        why = next((bad[n] for n in range(line_no, last_line + 1) if n in bad), None)
        if why is None and last_line > line_no and sum(size for _, _, size in lines.record) > max_bytes:
            why = _too_long(max_bytes, last_line - line_no + 1)  # each line fits, the record they make does not
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
            check_values(obj)
            yield from_object(obj, line_no, "plain")
        except LineError as exc:
            yield Rejection(line_no, str(exc), exc.code, exc.param, custom_id_of(obj))


def _csv_error(exc: csv.Error, first: int, last: int) -> str:
    if str(exc) == "unexpected end of data":  # the only error the csv module raises at the end of the input
        rows = f"lines {first}-{last}, the end of the file, were read as one field" if last > first \
            else "it runs to the end of the file"
        return (f"a quoted field opened on this line is never closed ({rows}; none of it is taken); "
                "close the quote (a quote inside a quoted field is written twice: \"\")")
    return f"{exc} (write a quote inside a quoted field twice: \"\")" if "expected after '\"'" in str(exc) \
        else str(exc)


def detect_format(path: Path, fmt: Format = "auto") -> FileFormat:
    """The format asked for, or the one the file's suffix names (.csv, .tsv; anything else is JSONL)."""
    if fmt != "auto":
        return fmt
    return {".csv": "csv", ".tsv": "tsv"}.get(path.suffix.lower(), "jsonl")  # type: ignore[return-value]


def parse_stream(stream: io.BufferedReader, fmt: FileFormat, max_line_bytes: int = MAX_LINE_BYTES,
                 form: LineForm = "auto") -> Iterator[ParsedItem | Rejection]:
    """Accepted items and rejections, in file order. Duplicate ids are rejected (first one wins). `form`
    "batch": a Batch API input file, each JSONL line read as a Batch line."""
    seen: dict[str, int] = {}
    entries = {"csv": lambda: _csv(stream, max_line_bytes), "tsv": lambda: _csv(stream, max_line_bytes, "\t"),
               "jsonl": lambda: _jsonl(stream, max_line_bytes, form)}[fmt]()
    for entry in entries:
        if isinstance(entry, ParsedItem):
            first = seen.setdefault(entry.custom_id, entry.line_no)
            if first != entry.line_no:
                field = "custom_id" if entry.form == "batch" else "id"
                yield Rejection(entry.line_no, f"duplicate {field} {entry.custom_id!r} (first on line {first})",
                                "duplicate_custom_id", field, entry.custom_id)
                continue
        yield entry
