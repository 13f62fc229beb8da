"""The upstream Marvel API client. httpx is imported here and nowhere else in marveld.

Callers get domain objects (:class:`~marveld.domain.characters.CharacterPage`,
:class:`~marveld.domain.characters.Character`) and domain errors (NotFound,
UpstreamRejected, UpstreamUnavailable, UpstreamError), never httpx's.
"""

from __future__ import annotations

from marveld.upstream.client import OUTCOMES, MarvelClient, OnRequest
from marveld.upstream.retry import RetryPolicy

__all__ = ["OUTCOMES", "MarvelClient", "OnRequest", "RetryPolicy"]
