"""Webhook simulation: change the simulator's characters over HTTP, or let it churn.

- ``POST /_sim/characters/{id}`` with a partial character JSON updates it (``modified``
  becomes now, so the etag of every page holding it changes) and answers the character;
- ``POST /_sim/characters`` with at least a ``name`` adds one and answers it (201) with
  its new id;
- either then queues a signed webhook to ``webhook_url``, unless ``?webhook=false``;
- ``--churn N`` makes N random changes a minute (one addition in ten), seeded by
  ``--seed``.

These endpoints take no Marvel credentials: the simulator is a test and demo tool on a
trusted address, and ``/_sim/`` is its own namespace.
"""

from __future__ import annotations

import json
import logging
import random
from typing import Any, Final

import trio
from starlette.requests import Request
from starlette.responses import Response

from marveld.sim import errors
from marveld.sim.changes import ChangeRefused, created, updated
from marveld.sim.render import JSON_TYPE, read_body
from marveld.sim.state import SimState
from marveld.sim.webhooks import queue_webhook

log = logging.getLogger(__name__)

EDIT_PATH: Final = "/_sim/characters"
MAX_BODY_BYTES: Final = 64 * 1024
NO_WEBHOOK: Final = frozenset({"false", "0", "no"})
CHURN_ADD_SHARE: Final = 0.1
CHURN_LINES: Final = (
    "was seen over the East River at dawn.",
    "has a new costume, and opinions about the old one.",
    "joined a team, then left it.",
    "saved a bus full of tourists in Midtown.",
    "is rumoured to be back from the dead, again.",
)


class Editor:
    """Changes characters in the live catalogue and queues their webhooks."""

    def __init__(self, state: SimState) -> None:
        self._state = state

    def update(self, character_id: int, partial: Any, *, notify: bool = True) -> dict[str, Any]:
        """The updated character; KeyError when there is none; ChangeRefused when the
        change is not valid."""
        entry = self._state.catalogue.get(character_id)
        if entry is None:
            raise KeyError(character_id)
        now = self._state.clock()
        character = updated(json.loads(entry.encoded), partial, now)
        self._apply(character, "character.updated", notify=notify)
        return character

    def add(self, partial: Any, *, notify: bool = True) -> dict[str, Any]:
        now = self._state.clock()
        character = created(partial, self._state.catalogue.next_id(), now)
        self._apply(character, "character.added", notify=notify)
        return character

    def _apply(self, character: dict[str, Any], kind: str, *, notify: bool) -> None:
        self._state.catalogue.put(character)
        self._state.changes += 1
        log.info("%s: %d %r", kind, character["id"], character["name"])
        if notify:
            queue_webhook(self._state, kind, [character["id"]], self._state.clock())

    async def churn(self, per_minute: float, seed: int) -> None:
        """``per_minute`` random changes a minute, until cancelled."""
        rng = random.Random(seed)
        number = 0
        while True:
            await trio.sleep(60.0 / per_minute)
            number += 1
            if rng.random() < CHURN_ADD_SHARE:
                self.add({"name": f"Churned Hero #{seed}-{number}"})
                continue
            ids = self._state.catalogue.ids()
            if not ids:
                continue
            target = rng.choice(ids)
            entry = self._state.catalogue.get(target)
            assert entry is not None
            line = f"{entry.name} {rng.choice(CHURN_LINES)}"
            self.update(target, {"description": line})


class EditorApi:
    """The HTTP side of :class:`Editor`."""

    def __init__(self, editor: Editor) -> None:
        self._editor = editor

    async def update_character(self, request: Request) -> Response:
        text = request.path_params["character_id"]
        character_id = int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else 0
        partial = await _body(request)
        try:
            character = self._editor.update(character_id, partial, notify=_notify(request))
        except KeyError:
            raise errors.character_not_found() from None
        except ChangeRefused as exc:
            raise errors.bad_change(str(exc)) from None
        return _json(character, 200)

    async def add_character(self, request: Request) -> Response:
        partial = await _body(request)
        try:
            character = self._editor.add(partial, notify=_notify(request))
        except ChangeRefused as exc:
            raise errors.bad_change(str(exc)) from None
        return _json(character, 201)


def _notify(request: Request) -> bool:
    return request.query_params.get("webhook", "true").lower() not in NO_WEBHOOK


async def _body(request: Request) -> Any:
    body = await read_body(request)
    if len(body) > MAX_BODY_BYTES:
        raise errors.bad_change(f"the body is over {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise errors.bad_change("the body is not JSON") from None


def _json(value: Any, status: int) -> Response:
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(body, status_code=status, media_type=JSON_TYPE)
