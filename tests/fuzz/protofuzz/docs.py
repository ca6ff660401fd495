"""What docs/protocol.md promises, read from the page itself at test time.

The oracle accepts exactly the error codes of the "Errors" table: a code a
developer adds to the server without documenting it fails the fuzzer, and so
does an answer that lacks an extra field the table says the code carries.
"""

from __future__ import annotations

import re
from pathlib import Path

import attrs

PROTOCOL_MD = Path(__file__).resolve().parents[3] / "docs" / "protocol.md"

_ROW = re.compile(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|(.*)$")
_NAME = re.compile(r"`([a-z_][a-z0-9_]*)`")


@attrs.frozen
class ErrorCode:
    code: str
    #: Extra fields every answer with this code carries.
    required: frozenset[str]
    #: Extra fields named with a condition, e.g. "`field` (for range errors)".
    optional: frozenset[str]
    #: The connection column says the server closes the connection after it.
    closes: bool


def documented_errors(path: Path = PROTOCOL_MD) -> dict[str, ErrorCode]:
    """Parse the "## Errors" table of docs/protocol.md into code -> L{ErrorCode}."""
    text = path.read_text(encoding="utf-8")
    start = text.index("\n## Errors")
    end = text.find("\n## ", start + 1)
    section = text[start:end if end >= 0 else None]
    codes: dict[str, ErrorCode] = {}
    for line in section.splitlines():
        match = _ROW.match(line.strip())
        if not match:
            continue
        cells = [c.strip() for c in match.group(2).split("|")]
        # cells: when, extra fields, connection, ""
        extra = cells[1] if len(cells) > 1 else ""
        connection = cells[2] if len(cells) > 2 else ""
        required, optional = set(), set()
        for part in extra.split(","):
            names = _NAME.findall(part)
            (optional if "(" in part else required).update(names)
        codes[match.group(1)] = ErrorCode(
            code=match.group(1), required=frozenset(required), optional=frozenset(optional),
            closes="closed" in connection.lower(),
        )
    if len(codes) < 10:
        raise AssertionError(f"found only {sorted(codes)} in the Errors table of {path}: has its layout changed?")
    return codes
