"""``POST /v1/webhooks/marvel``: the webhook receiver on the HTTP port.

202 once a genuine delivery is recorded (it is applied in the background), 200 for a
delivery seen before, 401 for an unsigned, forged or stale one, 400 for a signed body that
is not a change notification (``field`` names the member at fault: ``ids[0]``,
``occurred_at``; too deep a nesting and lone surrogates included), 413 past 64 KiB, 503
without MARVELD_WEBHOOK_SECRET. Every refusal is a short ``application/problem+json`` body
and changes nothing.
"""

from __future__ import annotations

from contextlib import aclosing

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from marveld.domain.webhooks import (
    MAX_BODY_BYTES,
    SIGNATURE_HEADER,
    PayloadInvalid,
    SignatureRefused,
)
from marveld.services.webhooks import WebhookService, WebhooksNotConfigured

PATH = "/v1/webhooks/marvel"
PROBLEM = "application/problem+json"


def problem(
    status: int, title: str, detail: str | None = None, field: str | None = None
) -> Response:
    body: dict[str, object] = {"title": title, "status": status}
    if detail:
        body["detail"] = detail
    if field:
        body["field"] = field
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


def webhook_route(service: WebhookService) -> Route:
    async def receive(request: Request) -> Response:
        body = b""
        async with aclosing(request.stream()) as chunks:
            async for chunk in chunks:
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    return problem(413, "body too large", f"at most {MAX_BODY_BYTES} bytes")
        try:
            receipt = await service.receive(body, request.headers.get(SIGNATURE_HEADER))
        except WebhooksNotConfigured:
            return problem(503, "webhooks not configured", "set MARVELD_WEBHOOK_SECRET")
        except SignatureRefused as exc:
            return problem(401, "invalid signature", str(exc))
        except PayloadInvalid as exc:
            return problem(400, "invalid payload", str(exc), exc.field)
        if receipt.duplicate:
            return JSONResponse({"status": "duplicate"}, status_code=200)
        return JSONResponse({"status": "accepted"}, status_code=202)

    return Route(PATH, receive, methods=["POST"])
