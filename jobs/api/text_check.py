"""One check, for every tenant path, of the text a request brings: path ids, query parameters, form fields (and
an upload's file name) and JSON bodies. Text the database cannot store (a NUL character, a lone surrogate:
routeyard/text.py) would fail its query or insert with a 500; here it answers 404 for an id (no stored id holds
one) and 422 naming the field for anything else, before the route reads the database.
"""

from __future__ import annotations

import json

from fastapi import Request
from starlette.datastructures import UploadFile

from jobs.services.input_lines import LineError, check_values
from routeyard.errors import InvalidInput, NotFound
from routeyard.text import shown, unstorable

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")


async def check_request_text(request: Request) -> None:
    for name, value in request.path_params.items():
        if isinstance(value, str) and unstorable(value):
            noun = name.removesuffix("_id").replace("_", " ")
            raise NotFound(f"no {noun} '{shown(value)}': no id holds a NUL character or a lone surrogate")
    for name, value in request.query_params.multi_items():
        if why := unstorable(name) or unstorable(value):
            raise InvalidInput(f"query parameter {shown(name)!r}: {why}")
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(FORM_TYPES):
        for name, field in (await request.form()).multi_items():  # FastAPI parsed it already: this is its copy
            if isinstance(field, UploadFile):
                if field.filename and (why := unstorable(field.filename)):
                    raise InvalidInput(f"form field {shown(name)!r}: the file name {why}")
            elif why := unstorable(name) or unstorable(field):
                raise InvalidInput(f"form field {shown(name)!r}: {why}")
    elif "json" in content_type and (body := await request.body()):
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            return  # not JSON, or too deep: the route's own parsing refuses it (422)
        try:
            check_values(document)
        except LineError as exc:
            raise InvalidInput(str(exc)) from None
