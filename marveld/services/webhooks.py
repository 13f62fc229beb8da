"""Signed change webhooks: receive fast, apply in the background, each delivery once.

:meth:`WebhookService.receive` checks the signature (``domain.webhooks``: HMAC-SHA256,
constant-time compare, timestamp within 5 minutes of the clock passed in) and the
payload, records the delivery as pending in SQLite (by its signature: the same delivery
twice is recorded once) and rings the worker; the HTTP face answers 202 right away.
:meth:`WebhookService.run` is the worker: it fetches the named characters of up to
``APPLY_BATCH`` pending deliveries at once from the upstream, then applies each delivery,
oldest first, as one batch (correlation id ``webhook:<delivery>``), marking it applied in
the same transaction. A delivery whose fetch fails stays pending
and is retried with backoff; one received just before a crash is applied after restart.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import trio

from marveld.domain.changes import Provenance
from marveld.domain.characters import Character
from marveld.domain.errors import MarveldError, NotFound, UpstreamError
from marveld.domain.webhooks import PayloadInvalid, SignatureRefused, WebhookPayload, verify
from marveld.metrics import Metrics
from marveld.services.sync import SyncService
from marveld.storage import BatchResult, Delivery, StorageError, Store
from marveld.upstream import MarvelClient, RetryPolicy

log = logging.getLogger(__name__)

FETCH_CONCURRENCY: Final = 8  # upstream calls in flight for webhook deliveries
APPLY_BATCH: Final = 32  # deliveries fetched together, then applied in order
RETRY_INITIAL: Final = 1.0
RETRY_MAX: Final = 60.0
RECHECK_SECONDS: Final = 5.0


class WebhooksNotConfigured(MarveldError):
    """No MARVELD_WEBHOOK_SECRET: deliveries cannot be checked, so none is taken."""


@dataclass(frozen=True, slots=True)
class Receipt:
    delivery_id: str
    duplicate: bool


class WebhookService:
    def __init__(
        self,
        store: Store,
        upstream: MarvelClient,
        sync: SyncService,
        metrics: Metrics,
        clock: Callable[[], datetime],
        secret: str | None,
        *,
        retry_initial: float = RETRY_INITIAL,
        retry_max: float = RETRY_MAX,
    ) -> None:
        self._store = store
        self._upstream = upstream
        self._sync = sync
        self._metrics = metrics
        self._clock = clock
        self._secret = secret
        self._backoff = RetryPolicy(backoff_initial=retry_initial, backoff_max=retry_max)
        self._ring, self._doorbell = trio.open_memory_channel[None](1)

    async def receive(self, body: bytes, signature: str | None) -> Receipt:
        """Take a delivery: WebhooksNotConfigured, SignatureRefused (unsigned, forged,
        stale) or PayloadInvalid change nothing; a genuine one is recorded once."""
        if self._secret is None:
            self._metrics.webhook_delivery("not_configured")
            raise WebhooksNotConfigured("webhooks not configured")
        try:
            delivery_id = verify(self._secret, signature, body, self._clock())
        except SignatureRefused as exc:
            self._metrics.webhook_delivery("refused")
            log.warning("webhook refused: %s", exc)
            raise
        try:
            payload = WebhookPayload.parse(body)
        except PayloadInvalid:
            self._metrics.webhook_delivery("invalid")
            raise
        new = await self._store.webhooks.record(
            delivery_id,
            kind=payload.type,
            ids=payload.ids,
            occurred_at=payload.occurred_at,
            now=self._clock(),
        )
        if not new:
            self._metrics.webhook_delivery("duplicate")
            log.info("webhook %s seen before: not applied again", delivery_id[:12])
            return Receipt(delivery_id, duplicate=True)
        self._metrics.webhook_delivery("accepted")
        self.ring()
        return Receipt(delivery_id, duplicate=False)

    def ring(self) -> None:
        """Wake the worker: a delivery waits (here, or recorded by another replica)."""
        with contextlib.suppress(trio.WouldBlock):  # already rung: it finds this one too
            self._ring.send_nowait(None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The worker: apply pending deliveries, oldest first, until cancelled."""
        task_status.started()
        failures = 0
        while True:
            failed = 0
            pending = await self._pending()
            for start in range(0, len(pending), APPLY_BATCH):
                batch = pending[start : start + APPLY_BATCH]
                fetched = await self._fetch_batch(batch)
                for delivery in batch:  # applied oldest first, each in its transaction
                    try:
                        outcome = fetched[delivery.id]
                        if isinstance(outcome, UpstreamError):
                            raise outcome
                        await self._apply(delivery, outcome)
                    except (UpstreamError, StorageError) as exc:
                        failed += 1
                        self._metrics.webhook_delivery("failed")
                        log.warning("webhook %s not applied yet: %s", delivery.id[:12], exc)
            if failed:
                failures += 1
                await trio.sleep(self._backoff.backoff(failures))
                continue
            failures = 0
            # Rung by receive() here, or by another replica's signal (ring); the recheck
            # finds a delivery whose ring was lost (a replica killed, LISTEN down).
            with trio.move_on_after(RECHECK_SECONDS):
                await self._doorbell.receive()

    async def _pending(self) -> list[Delivery]:
        try:
            return await self._store.webhooks.pending()
        except StorageError as exc:
            log.warning("cannot read pending webhooks: %s", exc)
            return []

    async def _fetch_batch(
        self, batch: Sequence[Delivery]
    ) -> dict[str, list[Character] | UpstreamError]:
        """Every delivery's characters, fetched at once (FETCH_CONCURRENCY calls in flight
        in all), or the error that stopped one: one slow upstream call no longer holds up
        the deliveries behind it. Two deliveries for one character may both get its newest
        version: the second then changes nothing (the diff finds no change)."""
        results: dict[str, list[Character] | UpstreamError] = {}
        limiter = trio.CapacityLimiter(FETCH_CONCURRENCY)

        async def one(delivery: Delivery) -> None:
            try:
                results[delivery.id] = await self._fetch(delivery.ids, limiter)
            except UpstreamError as exc:
                results[delivery.id] = exc

        async with trio.open_nursery() as nursery:
            for delivery in batch:
                nursery.start_soon(one, delivery)
        return results

    async def apply(self, delivery: Delivery) -> BatchResult:
        """Fetch the delivery's characters and apply them as one batch."""
        return await self._apply(delivery, await self._fetch(delivery.ids))

    async def _apply(self, delivery: Delivery, characters: list[Character]) -> BatchResult:
        cause = f"webhook:{delivery.id}"
        provenance = Provenance(source="webhook", correlation_id=cause, causation_id=cause)
        result = await self._sync.apply(characters, provenance, delivery_id=delivery.id)
        self._metrics.webhook_delivery("applied")
        log.info(
            "webhook %s (%s %s): %d added, %d updated",
            delivery.id[:12],
            delivery.type,
            list(delivery.ids),
            result.added,
            result.updated,
        )
        return result

    async def _fetch(
        self, ids: Sequence[int], limiter: trio.CapacityLimiter | None = None
    ) -> list[Character]:
        """The characters, in ``ids`` order; ids the upstream does not know are skipped.
        The first UpstreamError of any fetch is raised (as itself, not in a group)."""
        found: dict[int, Character] = {}
        errors: list[UpstreamError] = []
        limiter = limiter or trio.CapacityLimiter(FETCH_CONCURRENCY)

        async def one(marvel_id: int) -> None:
            async with limiter:
                try:
                    found[marvel_id] = await self._upstream.get_character(marvel_id)
                except NotFound:
                    log.warning("webhook names character %d, which the upstream lacks", marvel_id)
                except UpstreamError as exc:
                    errors.append(exc)

        async with trio.open_nursery() as nursery:
            for marvel_id in ids:
                nursery.start_soon(one, marvel_id)
        if errors:
            raise errors[0]
        return [found[i] for i in ids if i in found]
