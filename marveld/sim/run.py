"""Start the simulator: build the catalogue, serve the app, report the real port."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import trio

from marveld.sim.app import API_ROOT, build_app
from marveld.sim.catalogue import Catalogue, load_dataset
from marveld.sim.editor import Editor
from marveld.sim.generate import generate_characters
from marveld.sim.options import SimOptions
from marveld.sim.state import SimState
from marveld.sim.webhooks import send_webhooks
from marveld.web.server import serve_asgi

log = logging.getLogger(__name__)


@dataclass
class SimHandle:
    """A running simulator. ``url`` is the base URL marveld's ``upstream.url`` takes;
    ``editor`` changes its characters as the ``/_sim/characters`` endpoints do."""

    port: int
    url: str
    state: SimState
    editor: Editor


async def run_sim(
    options: SimOptions, *, task_status: trio.TaskStatus[SimHandle] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the simulator until cancelled; ``task_status.started`` gets the handle once it
    listens. A dataset that cannot be read raises ``DatasetError`` before anything listens."""
    catalogue = await trio.to_thread.run_sync(build_catalogue, options)
    state = SimState(catalogue, options)
    editor = Editor(state)
    app = build_app(state, editor)
    async with trio.open_nursery() as nursery:
        await nursery.start(send_webhooks, state)
        serve = partial(
            serve_asgi, app, options.host, options.port, name="sim", setting="--host, --port"
        )
        port: int = await nursery.start(serve)
        url = base_url(options.host, port)
        log.info("marveld sim serving %d characters on %s", len(catalogue), url)
        if options.churn > 0:
            nursery.start_soon(editor.churn, options.churn, options.seed)
            log.info("churning: %g random changes a minute", options.churn)
        task_status.started(SimHandle(port=port, url=url, state=state, editor=editor))


def build_catalogue(options: SimOptions) -> Catalogue:
    """The dataset file's characters, or the generated catalogue for ``options.seed``."""
    if options.dataset is not None:
        return Catalogue(load_dataset(options.dataset))
    return Catalogue(generate_characters(options.seed))


def base_url(host: str, port: int) -> str:
    """``http://host:port/v1/public``; a wildcard address becomes its loopback one."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}{API_ROOT}"
