"""Text the database cannot store, found and shown safely.

PostgreSQL refuses a NUL character (U+0000) in text and jsonb, and no database driver encodes a lone surrogate
(U+D800..U+DFFF, what an unpaired JSON escape such as "\\udfff" or a non-UTF-8 byte in a file name or argument
decodes to) as UTF-8. Either one, stored, fails the whole transaction: so every front door refuses such text
where it comes in, naming the field, and messages quote it escaped.
"""

from __future__ import annotations

import re

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable(text: str) -> str | None:
    """Why `text` cannot be stored (None: it can), e.g. "contains a NUL character (\\u0000)"."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "contains a NUL character (\\u0000), which cannot be stored; remove it"
    return (f"contains a lone surrogate (\\u{ord(found.group()):04x}), which is not a character and cannot be "
            "stored as UTF-8; remove it (a pair such as \\ud83d\\ude00, one emoji, is fine)")


def shown(text: str) -> str:
    """`text` with its NUL characters and lone surrogates written as escapes, safe to store and to print."""
    return _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
