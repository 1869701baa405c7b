"""Terminal safety: the one place text from outside is made safe to print.

Ticket titles, file names, YAML keys, agent output and CI logs all come from
outside and reach a person's terminal (TUI, ``events``, ``status``, ``report``).
A raw ESC there can move the cursor, recolour or redraw other rows (a title that
paints a fake "CI pass"). Every string on its way to a terminal goes through
:func:`terminal_safe` (directly, or via :func:`sanitize_message` for whole
protocol messages, which the client applies to everything it decodes).

Escaped: C0 controls (except ``\\n`` and ``\\t`` in multi-line text), DEL, C1
controls (U+0080..U+009F, which include the 8-bit CSI), and the Unicode bidi
and line/paragraph separators that reorder or break what is displayed
(U+061C, U+200E/F, U+2028/9, U+202A..U+202E, U+2066..U+2069). Each becomes a
visible ``\\xNN`` / ``\\uNNNN`` escape, so nothing is silently lost.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

__all__ = ["MULTILINE_FIELDS", "sanitize_message", "terminal_safe"]

_BIDI = "\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_ONE_LINE = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI}]")
_MULTI_LINE = re.compile(f"[\x00-\x08\x0b-\x1f\x7f-\x9f{_BIDI}]")

#: Struct fields that hold multi-line text (newlines and tabs kept).
MULTILINE_FIELDS = frozenset(
    {"text", "log_tail", "description", "feedback", "data", "question", "answer"}
)


def _escape(match: re.Match[str]) -> str:
    c = ord(match.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def terminal_safe(text: str, multiline: bool = False) -> str:
    """``text`` with every terminal control character shown as a visible escape.

    Args:
        text: any string from outside.
        multiline: keep ``\\n`` and ``\\t`` (``\\r\\n`` becomes ``\\n``); otherwise
            they are escaped too, so one value is always one line.

    Returns:
        A string that cannot move the cursor, change colours or reorder text.
    """
    if multiline:
        text = text.replace("\r\n", "\n")
        return _MULTI_LINE.sub(_escape, text)
    return _ONE_LINE.sub(_escape, text)


T = TypeVar("T")


def sanitize_message(value: T, multiline: bool = False) -> T:
    """A copy of ``value`` with :func:`terminal_safe` applied to every string inside.

    Walks msgspec structs, dicts (keys too), lists and tuples; fields named in
    :data:`MULTILINE_FIELDS` keep their newlines. Structs (frozen ones too) are
    replaced only when something changed, so clean values cost no copies.
    """
    return _walk(value, multiline)  # type: ignore[no-any-return]


def _walk(value: Any, multiline: bool) -> Any:
    if isinstance(value, str):
        return terminal_safe(value, multiline)
    if hasattr(type(value), "__struct_fields__"):  # a msgspec Struct (msgspec not imported:
        changes = {}  # the CI job escapes the daemon's reply with terminal_safe alone)
        for name in value.__struct_fields__:
            old = getattr(value, name)
            if old is None or isinstance(old, bool | int | float):
                continue
            new = _walk(old, multiline or name in MULTILINE_FIELDS)
            if new != old:
                changes[name] = new
        if not changes:
            return value
        from msgspec import structs

        return structs.replace(value, **changes)
    if isinstance(value, dict):
        return {
            _walk(k, False): _walk(v, multiline or k in MULTILINE_FIELDS) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_walk(v, multiline) for v in value]
    if isinstance(value, tuple):
        return tuple(_walk(v, multiline) for v in value)
    return value
