"""Marvel's response envelope, assembled from pre-encoded characters, and its etag; reading
a request's body."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from starlette.requests import ClientDisconnect, Request

from marveld.sim import errors
from marveld.sim.catalogue import Entry

JSON_TYPE = "application/json; charset=utf-8"
COPYRIGHT = "© 2022 MARVEL"
ATTRIBUTION_TEXT = f"Data provided by Marvel. {COPYRIGHT}"
ATTRIBUTION_HTML = f'<a href="http://marvel.com">{ATTRIBUTION_TEXT}</a>'

_HEAD = json.dumps(
    {
        "code": 200,
        "status": "Ok",
        "copyright": COPYRIGHT,
        "attributionText": ATTRIBUTION_TEXT,
        "attributionHTML": ATTRIBUTION_HTML,
    },
    ensure_ascii=False,
    separators=(",", ":"),
).encode()[:-1]


def render_page(
    results: Sequence[Entry], *, offset: int, limit: int, total: int
) -> tuple[bytes, str]:
    """The JSON body of a 200 and its etag, a sha1 of the ``data`` member.

    Keys come in the API's order: ``code, status, copyright, attributionText,
    attributionHTML, etag, data{offset, limit, total, count, results}``.
    """
    data = b"".join(
        (
            b'{"offset":%d,"limit":%d,"total":%d,"count":%d,"results":['
            % (offset, limit, total, len(results)),
            b",".join(entry.encoded for entry in results),
            b"]}",
        )
    )
    etag = hashlib.sha1(data).hexdigest()
    body = b"".join((_HEAD, b',"etag":"', etag.encode(), b'","data":', data, b"}"))
    return body, etag


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """True when an ``If-None-Match`` header names ``etag`` (quoted or bare, weak or
    strong, in a list) or is ``*``."""
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        tag = candidate.strip().removeprefix("W/").strip('"')
        if tag in (etag, "*"):
            return True
    return False


async def read_body(request: Request) -> bytes:
    """The request's body; a client that hangs up before sending all of it gets a 400 it
    will never read, rather than a traceback in the simulator's log."""
    try:
        return await request.body()
    except ClientDisconnect:
        raise errors.bad_change("the client hung up before its body was complete") from None
