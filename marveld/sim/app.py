"""The simulator's ASGI app: Marvel's character endpoints, ``/_sim/stats``, the change
endpoints of ``editor.py``, gzip, and a front door that adds latency and injects failures."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from marveld.sim import errors
from marveld.sim.auth import check_credentials
from marveld.sim.catalogue import Entry
from marveld.sim.editor import EDIT_PATH, Editor, EditorApi
from marveld.sim.faults import FAULTS_PATH, FaultsApi, inject
from marveld.sim.params import DEFAULT_LIMIT, check_known, last_values, parse_list_query
from marveld.sim.render import JSON_TYPE, etag_matches, render_page
from marveld.sim.state import SimState

log = logging.getLogger(__name__)

API_ROOT = "/v1/public"
CHARACTERS_PATH = f"{API_ROOT}/characters"
STATS_PATH = "/_sim/stats"
GZIP_MIN_BYTES = 500
GZIP_LEVEL = 6
MAX_ID_DIGITS = 18


def build_app(state: SimState, editor: Editor) -> ASGIApp:
    """The whole simulator as one ASGI app, outermost first: front door, gzip, routes."""
    api = CharacterApi(state)
    edits = EditorApi(editor)
    faults = FaultsApi(state)
    routes = [
        Route(CHARACTERS_PATH, api.list_characters, methods=["GET"]),
        Route(CHARACTERS_PATH + "/{character_id}", api.get_character, methods=["GET"]),
        Route(STATS_PATH, api.stats, methods=["GET"]),
        Route(FAULTS_PATH, faults.get, methods=["GET"]),
        Route(FAULTS_PATH, faults.put, methods=["PUT"]),
        Route(EDIT_PATH, edits.add_character, methods=["POST"]),
        Route(EDIT_PATH + "/{character_id}", edits.update_character, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={errors.ApiError: _api_error, HTTPException: _http_error},
    )
    return FrontDoor(GZipMiddleware(app, GZIP_MIN_BYTES, GZIP_LEVEL), state)


class CharacterApi:
    """The endpoints. Refusals raise ApiError; the exception handler renders them."""

    def __init__(self, state: SimState) -> None:
        self._state = state

    async def list_characters(self, request: Request) -> Response:
        params = last_values(request.query_params.multi_items())
        self._admit(params)
        query = parse_list_query(params)
        matching = self._state.catalogue.select(query.selection)
        page = matching[query.offset : query.offset + query.limit]
        return self._page(
            request, page, offset=query.offset, limit=query.limit, total=len(matching)
        )

    async def get_character(self, request: Request) -> Response:
        params = last_values(request.query_params.multi_items())
        self._admit(params)
        check_known(params, frozenset())
        character_id = _parse_id(request.path_params["character_id"])
        entry = None if character_id is None else self._state.catalogue.get(character_id)
        if entry is None:
            raise errors.character_not_found()
        return self._page(request, [entry], offset=0, limit=DEFAULT_LIMIT, total=1)

    async def stats(self, request: Request) -> Response:
        return Response(json.dumps(self._state.stats()).encode(), media_type=JSON_TYPE)

    def _admit(self, params: dict[str, str]) -> None:
        """Auth, then the daily budget: the gateway's checks before any parameter check."""
        state = self._state
        key = check_credentials(params, state.public_key, state.private_key)
        retry_after = state.quota.spend(key, state.daily_limit)
        if retry_after is not None:
            state.throttled += 1
            raise errors.throttled(retry_after)

    def _page(
        self, request: Request, results: Sequence[Entry], *, offset: int, limit: int, total: int
    ) -> Response:
        body, etag = render_page(results, offset=offset, limit=limit, total=total)
        self._state.served += 1
        headers = {"etag": f'"{etag}"'}
        if etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        return Response(body, headers=headers, media_type=JSON_TYPE)


def _parse_id(text: str) -> int | None:
    """A character id from the path; None when it cannot be one."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= MAX_ID_DIGITS else None


def _error_response(error: errors.ApiError) -> Response:
    return Response(
        error.encoded(), status_code=error.status, headers=error.headers, media_type=JSON_TYPE
    )


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, errors.ApiError)
    log.debug("%s %s -> %d %s", request.method, request.url.path, exc.status, exc.body)
    return _error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Routing errors (unknown path, wrong method) in Marvel's JSON shapes."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return _error_response(errors.method_not_allowed(request.method))
    if exc.status_code == 404:
        return _error_response(errors.resource_not_found(request.url.path))
    return Response(exc.detail, status_code=exc.status_code, headers=exc.headers)


class FrontDoor:
    """Counts every character API call, adds the latency and injects failures, in front of
    everything else: a dropped connection must bypass gzip and Starlette's error handling."""

    def __init__(self, app: ASGIApp, state: SimState) -> None:
        self._app = app
        self._state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _is_character_call(scope["path"]):
            await self._app(scope, receive, send)
            return
        state = self._state
        state.requests += 1
        if state.latency_ms > 0:
            await trio.sleep(state.latency_ms / 1000)
        fault = state.roll_fault(
            conditional=any(k == b"if-none-match" for k, _ in scope["headers"])
        )
        if fault is None:
            await self._app(scope, receive, send)
            return
        state.failed += 1
        log.debug("injecting %s for %s", fault.value, scope["path"])
        await inject(fault, state.plan, self._app, scope, receive, send)


def _is_character_call(path: str) -> bool:
    return path == CHARACTERS_PATH or path.startswith(CHARACTERS_PATH + "/")
