"""The simulator's webhooks: queued by a change, sent by one background task.

A change never waits for its webhook: :func:`queue_webhook` puts the body on a bounded
queue and returns. :func:`send_webhooks` signs each body (``MARVELD_WEBHOOK_SECRET``) when
it sends it and tries a few times; a receiver that is down costs a warning in the log,
never an error in the simulator. Retries carry the first attempt's timestamp, so the
receiver sees the same signature and recognizes the same delivery.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Final

import trio

from marveld.domain.webhooks import WebhookPayload
from marveld.sim.state import SimState
from marveld.upstream import DeliveryFailed, WebhookSender

log = logging.getLogger(__name__)

ATTEMPTS: Final = 3
RETRY_DELAY: Final = 0.2  # seconds, times the attempt number


def queue_webhook(state: SimState, kind: str, ids: Sequence[int], occurred_at: datetime) -> bool:
    """Queue a ``character.added``/``character.updated`` webhook; False when none is sent
    (no ``webhook_url``, or the queue is full)."""
    if not state.webhook_url:
        return False
    payload = WebhookPayload(type=kind, ids=tuple(ids), occurred_at=occurred_at)
    # Each delivery has an id of its own: the receiver tells deliveries apart by their
    # signature, and two changes to one character in one second would otherwise sign the
    # same body, the second then taken for a replay of the first.
    body = json.dumps(
        {**payload.to_json(), "delivery_id": uuid.uuid4().hex}, separators=(",", ":")
    ).encode()
    try:
        state.webhook_queue.send_nowait(body)
    except trio.WouldBlock:
        state.webhooks_failed += 1
        log.warning("webhook queue full: %s for %s dropped", kind, list(ids))
        return False
    return True


async def send_webhooks(
    state: SimState, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Send queued webhooks, one at a time, until cancelled."""
    async with WebhookSender.open() as sender:
        task_status.started()
        async for body in state.webhook_backlog:
            await _deliver(sender, state, body)


async def _deliver(sender: WebhookSender, state: SimState, body: bytes) -> None:
    url, secret = state.webhook_url, state.webhook_secret
    if not url or not secret:
        state.webhooks_failed += 1
        log.warning("webhook dropped: the simulator has no webhook_url or webhook_secret")
        return
    timestamp = int(state.clock().timestamp())
    problem = ""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            status = await sender.send(url, body, secret=secret, timestamp=timestamp)
        except DeliveryFailed as exc:
            problem = str(exc)
        else:
            if 200 <= status < 300:
                state.webhooks_sent += 1
                return
            problem = f"{url} answered HTTP {status}"
            if status < 500 and status != 429:
                break  # refused: the same request would be refused again
        if attempt < ATTEMPTS:
            await trio.sleep(RETRY_DELAY * attempt)
    state.webhooks_failed += 1
    log.warning("webhook not delivered: %s", problem)
