"""Keep secrets out of the database and the logs."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import urlsplit, urlunsplit

_BEARER = re.compile(r"(?i)(bearer\s+|api[_-]?key[\"'=:\s]+)([A-Za-z0-9_\-\.]{8,})")
_OPENAI_KEY = re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """Replace known secret values, bearer tokens and sk-... keys with a marker."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[REDACTED]")
    text = _BEARER.sub(lambda m: m.group(1) + "[REDACTED]", text)
    return _OPENAI_KEY.sub("[REDACTED]", text)


def safe_url(url: str | None) -> str | None:
    """Drop user:password@ and query strings (some gateways take keys there) from a URL."""
    if not url:
        return url
    if url.startswith("sqlite"):  # a file path: nothing secret, and urlsplit would drop a slash of it
        return url
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class RedactingFilter(logging.Filter):
    """A logging filter that scrubs secrets from every record, whoever logs it (openai, httpx, us)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg = redact(message, self.secrets)
        record.args = ()
        return True


def install_log_redaction(secrets: Iterable[str]) -> None:
    """Attach the filter to every handler of the root logger."""
    flt = RedactingFilter(secrets)
    root = logging.getLogger()
    for handler in root.handlers:
        handler.addFilter(flt)
