"""The upstream Marvel API client, and the sender of signed change webhooks (the
simulator's). httpx is imported here and nowhere else in marveld.

Callers get domain objects (:class:`~marveld.domain.characters.CharacterPage`,
:class:`~marveld.domain.characters.Character`) and domain errors (NotFound,
UpstreamRejected, UpstreamUnavailable, UpstreamError), never httpx's.
"""

from __future__ import annotations

from marveld.upstream.client import OUTCOMES, MarvelClient, OnRequest
from marveld.upstream.retry import RetryPolicy
from marveld.upstream.webhooks import DeliveryFailed, WebhookSender

__all__ = [
    "OUTCOMES",
    "DeliveryFailed",
    "MarvelClient",
    "OnRequest",
    "RetryPolicy",
    "WebhookSender",
]
