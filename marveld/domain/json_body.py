"""The one reader of JSON request bodies (the gateway's and the webhook receiver's).

``json.loads`` alone is not safe on what a client sends: it recurses once per nesting level
(``[[[[...`` 64 KiB deep is a RecursionError, a 500), it takes ``NaN`` and ``Infinity``
(not JSON), a duplicated member silently replaces the first, and a ``"\\ud800"`` escape
gives a string nothing downstream can encode. :func:`parse_json` refuses each of these
with :class:`JsonInvalid`, naming the member at fault where there is one, before any of it
reaches a service.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any, Final, NoReturn

from marveld.domain.text import NOT_UNICODE, is_unicode, printable

# Our bodies nest two levels (an object holding a list); anything near this is hostile.
MAX_DEPTH: Final = 32
# A JSON string literal (escapes included), and anything that is not a bracket.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_DEPTH: Final = {"[": 1, "{": 1, "]": -1, "}": -1}
# Strict UTF-8 cannot carry a surrogate; only a \uD800-\uDFFF escape can make one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class JsonInvalid(ValueError):
    """The body is not JSON we take. ``field`` names the member at fault (``name``,
    ``ids[2]``), None when the fault is the body as a whole."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def parse_json(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON value of ``raw`` (UTF-8, RFC 8259), nested at most ``max_depth`` levels,
    with no duplicated member, no NaN or Infinity and no lone surrogate in any string."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JsonInvalid(f"the body is not UTF-8 (byte {exc.start})") from None
    _check_depth(text, max_depth)
    try:
        value = json.loads(text, object_pairs_hook=_object, parse_constant=_constant)
    except JsonInvalid:
        raise
    except (ValueError, RecursionError) as exc:
        raise JsonInvalid(f"the body is not JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(text):
        _check_strings(value, "")
    return value


def _check_depth(text: str, max_depth: int) -> None:
    """Count brackets outside string literals, without recursing, in C loops: a 64 KiB
    body of brackets takes a few milliseconds."""
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if len(brackets) > max_depth and max(accumulate(map(_DEPTH.__getitem__, brackets))) > max_depth:
        raise JsonInvalid(f"the body nests deeper than {max_depth} levels")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for name, member in pairs:
        if name in value:
            raise JsonInvalid("given more than once", printable(name))
        value[name] = member
    return value


def _constant(name: str) -> NoReturn:
    raise JsonInvalid(f"{name} is not a JSON number")


def _check_strings(value: Any, path: str) -> None:
    """Every string, names of members included, encodes as UTF-8. Depth is bounded
    already, so recursing here is safe."""
    if isinstance(value, str):
        if not is_unicode(value):
            raise JsonInvalid(NOT_UNICODE, path or None)
    elif isinstance(value, dict):
        for name, member in value.items():
            where = f"{path}.{printable(name)}" if path else printable(name)
            if not is_unicode(name):
                raise JsonInvalid(f"the member name {NOT_UNICODE}", where)
            _check_strings(member, where)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_strings(item, f"{path}[{index}]")
