"""The upload limit on each file part of a multipart body, counted as the body streams in.

A whole body may exceed ROUTEYARD_MAX_UPLOAD_BYTES by the form's own room (FORM_OVERHEAD, jobs/api/guard.py),
so counting the body alone let a file up to that much over the limit through. This reads the same multipart
stream as the app will (python-multipart, as Starlette does) and counts only the bytes of parts that carry a
file name: one over the limit is refused the moment it passes it, before the app has read the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks


class FileParts:
    """Feed it a multipart body's chunks; `over` turns true once one file part has more than `limit` bytes."""

    def __init__(self, content_type: str, limit: int) -> None:
        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        self.limit, self.over = limit, False
        self._size, self._is_file = 0, False
        self._header, self._value, self._disposition = b"", b"", b""  # a header's parts may come in pieces
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._begin, "on_header_field": self._field, "on_header_value": self._add_value,
            "on_header_end": self._header_end, "on_headers_finished": self._headers_done, "on_part_data": self._data}
        self._parser = MultipartParser(boundary, callbacks) if boundary else None

    def feed(self, chunk: bytes) -> None:
        if self._parser is None or self.over or not chunk:
            return
        try:
            self._parser.write(chunk)
        except MultipartParseError:  # not a well-formed form: the app's own parser says so (400)
            self._parser = None

    def _begin(self) -> None:
        self._size, self._is_file, self._disposition = 0, False, b""

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _add_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header, self._value = b"", b""

    def _headers_done(self) -> None:
        self._is_file = b"filename" in parse_options_header(self._disposition)[1]

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self._size += end - start
            self.over = self.over or self._size > self.limit
