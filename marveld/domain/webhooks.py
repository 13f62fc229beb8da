"""Signed change webhooks: the signature both sides compute, and the payload.

``X-Marvel-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">`` with the
shared secret (``MARVELD_WEBHOOK_SECRET``). The receiver accepts a delivery only when one
``v1`` matches (compared in constant time) and ``t`` is within :data:`TOLERANCE_SECONDS` of
its clock; the matching ``v1`` is the delivery's id, so the same delivery sent twice is
recognized. Body: ``{"type": "character.added"|"character.updated", "ids": [...],
"occurred_at": "..."}``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from marveld.domain.characters import parse_marvel_time
from marveld.domain.json_body import JsonInvalid, parse_json
from marveld.domain.queries import MAX_CHARACTER_ID

SIGNATURE_HEADER: Final = "X-Marvel-Signature"
TOLERANCE_SECONDS: Final = 300
MAX_BODY_BYTES: Final = 64 * 1024
MAX_IDS: Final = 100
TYPES: Final = ("character.added", "character.updated")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class SignatureRefused(Exception):
    """The delivery is unsigned, forged or stale. ``str(exc)`` is safe to show the sender."""


class PayloadInvalid(ValueError):
    """The body is signed but not a change notification. ``field`` names the member at
    fault (``ids[3]``, ``occurred_at``), None when it is the body as a whole."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>.<body>"``."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Marvel-Signature`` value for ``body`` sent at ``timestamp``."""
    return f"t={timestamp},v1={sign(secret, timestamp, body)}"


def verify(secret: str, header: str | None, body: bytes, now: datetime) -> str:
    """The delivery id (the matching ``v1``) of a genuine, fresh delivery; else
    SignatureRefused saying why."""
    if not header:
        raise SignatureRefused(f"missing {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isascii() and value.isdigit() and len(value) <= 12:
            timestamp = int(value)
        elif key == "v1" and _HEX64.match(value.lower()):
            candidates.append(value.lower())
    if timestamp is None or not candidates:
        raise SignatureRefused(f"malformed {SIGNATURE_HEADER} header: expected t=<unix>,v1=<hex>")
    expected = sign(secret, timestamp, body)
    matching = [c for c in candidates if hmac.compare_digest(c.encode(), expected.encode())]
    if not matching:
        raise SignatureRefused("signature does not match")
    if abs(now.timestamp() - timestamp) > TOLERANCE_SECONDS:
        raise SignatureRefused(
            f"timestamp outside the {TOLERANCE_SECONDS // 60} minute tolerance (replay?)"
        )
    return matching[0]


@dataclass(frozen=True, slots=True)
class WebhookPayload:
    type: str
    ids: tuple[int, ...]
    occurred_at: datetime | None = None

    @classmethod
    def parse(cls, body: bytes) -> WebhookPayload:
        """The payload of a signed body; PayloadInvalid naming what is wrong. The body is
        read by ``domain.json_body`` (bounded nesting, valid Unicode); ids are Marvel's
        (1 to MAX_CHARACTER_ID, as GetCharacter takes) and the time has a UTC equivalent."""
        try:
            data: Any = parse_json(body)
        except JsonInvalid as exc:
            raise PayloadInvalid(str(exc), exc.field) from None
        if not isinstance(data, dict):
            raise PayloadInvalid("body must be a JSON object")
        kind = data.get("type")
        if kind not in TYPES:
            raise PayloadInvalid(f"type must be one of {', '.join(TYPES)}", "type")
        ids = data.get("ids")
        if not isinstance(ids, list) or not ids or len(ids) > MAX_IDS:
            raise PayloadInvalid(f"ids must be a list of 1 to {MAX_IDS} character ids", "ids")
        for index, marvel_id in enumerate(ids):
            if (
                not isinstance(marvel_id, int)
                or isinstance(marvel_id, bool)
                or not 1 <= marvel_id <= MAX_CHARACTER_ID
            ):
                raise PayloadInvalid(
                    f"ids[{index}] must be a Marvel character id, 1 to {MAX_CHARACTER_ID}",
                    f"ids[{index}]",
                )
        occurred = data.get("occurred_at")
        if occurred is not None and not isinstance(occurred, str):
            raise PayloadInvalid("occurred_at must be a date-time string", "occurred_at")
        return cls(
            type=kind,
            ids=tuple(dict.fromkeys(ids)),
            occurred_at=None if occurred is None else _parse_time(occurred),
        )

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": self.type, "ids": list(self.ids)}
        if self.occurred_at is not None:
            body["occurred_at"] = self.occurred_at.astimezone(UTC).isoformat(timespec="seconds")
        return body


def _parse_time(text: str) -> datetime:
    """RFC 3339 / ISO 8601 (``Z`` allowed) or Marvel's ``2014-04-29T14:18:17-0400``, in
    UTC; PayloadInvalid for a time with no UTC equivalent (``9999-12-31T23:59:59-14:00``)."""
    value = parse_marvel_time(text)
    if value is None:
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise PayloadInvalid("occurred_at is not a date-time", "occurred_at") from None
    if value.tzinfo is None:
        raise PayloadInvalid("occurred_at needs an offset, e.g. Z", "occurred_at")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise PayloadInvalid("occurred_at is out of range", "occurred_at") from None
