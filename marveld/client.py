"""``marveld client``: call a running marveld over gRPC from a shell.

    marveld client register --name NAME --email EMAIL
    marveld client login --email EMAIL      # keeps the token for this server
    marveld client me
    marveld client characters [--name-starts-with P] [--modified-since D] [--order-by O] ...
    marveld client search TEXT
    marveld client get ID

Every command takes ``--server HOST:PORT`` (default ``$MARVELD_CLIENT_SERVER``, else
127.0.0.1:50051), ``--json`` and ``--timeout SECONDS``. Passwords come from
``--password-stdin``, ``$MARVELD_CLIENT_PASSWORD`` or a prompt; never from the command line.
``login`` keeps the token in ``$XDG_CONFIG_HOME/marveld/token.json`` (else
``~/.config/marveld/``), readable by its owner only, one token per server.

This module is also the example of using the generated stubs from Python: plain asyncio,
one ``grpclib.client.Channel``, the stubs of ``marveld.proto.marvel.v1``, metadata
``authorization: Bearer <token>``, and a timeout on every call. A failed call prints one
line with its gRPC status and exits 1; a usage error exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import re
import stat
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import betterproto2
import trio
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from trio_websocket import ConnectionClosed, HandshakeError, open_websocket_url

from marveld.proto.marvel import v1 as pb

T = TypeVar("T")

DEFAULT_SERVER = "127.0.0.1:50051"
DEFAULT_HTTP = "127.0.0.1:8080"
DEFAULT_TIMEOUT = 10.0
TOKEN_FILE = "token.json"
_SERVER = re.compile(r"(?:\[(?P<ipv6>[0-9a-fA-F:.]+)\]|(?P<host>[\w.-]+)):(?P<port>[0-9]{1,5})")


class ClientError(Exception):
    """A failure to report in one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# --- arguments ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``client`` command's options and sub-commands (``marveld client --help``)."""
    _common_options(parser)  # before the sub-command (`client --json me`) or after it
    commands = parser.add_subparsers(dest="client_command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        _common_options(sub)
        return sub

    register = command("register", "create an account")
    register.add_argument("--name", required=True)
    register.add_argument("--email", required=True)
    register.add_argument("--password-stdin", action="store_true", help="read it from stdin")

    login = command("login", "log in and keep the token")
    login.add_argument("--email", required=True)
    login.add_argument("--password-stdin", action="store_true", help="read it from stdin")

    command("me", "your profile")

    characters = command("characters", "list characters (Marvel's filters)")
    characters.add_argument("--name", default="", help="exact name")
    characters.add_argument("--name-starts-with", default="", help="name prefix")
    characters.add_argument("--modified-since", default="", help="2014-01-31 or RFC 3339")
    characters.add_argument("--order-by", default="", help="name, -name, modified, -modified")
    _page_arguments(characters)

    search = command("search", "free-text search over names")
    search.add_argument("text")
    _page_arguments(search)

    get = command("get", "one character by Marvel's id")
    get.add_argument("id", type=int)

    watch = command(
        "watch", "notifications as they happen, resuming after the last one seen (Ctrl-C stops)"
    )
    watch.add_argument(
        "--after-cursor", type=int, default=None, help="start after this cursor (0: all kept)"
    )
    watch.add_argument("--count", type=int, default=None, help="stop after this many notifications")
    watch.add_argument(
        "--ws", action="store_true", help="over the WebSocket of the HTTP port, not gRPC"
    )
    watch.add_argument(
        "--http",
        default=None,
        help=f"the HTTP address, for --ws (default $MARVELD_CLIENT_HTTP, else {DEFAULT_HTTP})",
    )


def _common_options(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: a value given after the sub-command is not overwritten by a default.
    parser.add_argument(
        "--server",
        default=argparse.SUPPRESS,
        help=f"marveld's gRPC address (default $MARVELD_CLIENT_SERVER, else {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON, not a table"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=argparse.SUPPRESS,
        help=f"seconds to wait for each call (default {DEFAULT_TIMEOUT:g})",
    )


def _page_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--limit", type=int, default=None, help="1 to 100 (default 20)")
    parser.add_argument("--offset", type=int, default=None, help="0 or more")


# --- running a command --------------------------------------------------------------------------


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Run the parsed ``client`` command; the exit status."""
    try:
        server = getattr(args, "server", None) or env.get("MARVELD_CLIENT_SERVER") or DEFAULT_SERVER
        client = Client(
            server,
            timeout=getattr(args, "timeout", DEFAULT_TIMEOUT),
            tokens=TokenStore(config_dir(env) / TOKEN_FILE),
        )
        if args.client_command == "watch":
            if args.ws:
                http = args.http or env.get("MARVELD_CLIENT_HTTP") or DEFAULT_HTTP
                return _watch_ws(client, args, http)
            return _watch(client, args)
        result = COMMANDS[args.client_command](client, args, env)
    except ClientError as exc:
        print(f"marveld client: {exc}", file=sys.stderr)
        return exc.code
    if getattr(args, "json", False):
        print(json.dumps(_plain(result.data), indent=2, ensure_ascii=False))
    else:
        print(result.text)
    return 0


class Output:
    """What a command prints: ``text`` (a table) or ``data`` (with ``--json``)."""

    def __init__(self, data: Any, text: str) -> None:
        self.data = data
        self.text = text


class Client:
    """One call at a time against ``server``, each on a fresh asyncio loop and channel."""

    def __init__(self, server: str, *, timeout: float, tokens: TokenStore) -> None:
        match = _SERVER.fullmatch(server)
        if match is None or int(match["port"]) > 65535:
            raise ClientError(f"--server must be host:port or [ipv6]:port, not {server!r}", 2)
        if not timeout > 0:
            raise ClientError("--timeout must be more than 0 seconds", 2)
        self.server = server
        self.host = match["ipv6"] or match["host"]
        self.port = int(match["port"])
        self.timeout = timeout
        self.tokens = tokens

    def metadata(self) -> dict[str, str]:
        """The bearer token kept for this server."""
        token = self.tokens.get(self.server)
        if token is None:
            raise ClientError(
                f"not logged in to {self.server}: run `marveld client login --email ...` first"
            )
        return {"authorization": f"Bearer {token['access_token']}"}

    def call(self, fn: Callable[[Channel], Awaitable[T]], *, bounded: bool = True) -> T:
        """``await fn(channel)`` on a plain asyncio loop; failures become one-line errors.
        ``bounded``: the whole call ends within the timeout (not for a stream)."""

        async def run_it() -> T:
            # The whole call, connecting included, ends within the timeout: a client
            # dialling a dead port can otherwise hang (it may even connect to itself).
            async with (
                asyncio.timeout(self.timeout if bounded else None),
                Channel(self.host, self.port) as channel,
            ):
                return await fn(channel)

        # asyncio.run(bounded()) is all a program of your own needs. marveld's modules
        # import trio-asyncio, whose event loop policy would hand asyncio.run a trio-backed
        # loop, so the loop is made explicitly here.
        try:
            with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
                return runner.run(run_it())
        except GRPCError as exc:
            relogin = exc.status is Status.UNAUTHENTICATED
            hint = " (log in again: marveld client login)" if relogin else ""
            raise ClientError(f"{exc.status.name}: {exc.message}{hint}") from None
        except TimeoutError:
            raise ClientError(
                f"DEADLINE_EXCEEDED: no answer from {self.server} within {self.timeout:g} s"
            ) from None
        except (StreamTerminatedError, ProtocolError) as exc:
            raise ClientError(f"UNAVAILABLE: the call to {self.server} broke off: {exc}") from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ClientError(f"UNAVAILABLE: cannot reach {self.server}: {reason}") from None


# --- the commands -------------------------------------------------------------------------------


def _register(client: Client, args: argparse.Namespace, env: Mapping[str, str]) -> Output:
    password = _password(args, env, confirm=True)

    async def go(channel: Channel) -> pb.UserProfile:
        return await pb.AuthServiceStub(channel).register(
            pb.RegisterRequest(name=args.name, email=args.email, password=password),
            timeout=client.timeout,
        )

    user = client.call(go)
    return Output(_data(user), f"registered {user.name} <{user.email}>, id {user.id}")


def _login(client: Client, args: argparse.Namespace, env: Mapping[str, str]) -> Output:
    password = _password(args, env, confirm=False)

    async def go(channel: Channel) -> pb.LoginResponse:
        return await pb.AuthServiceStub(channel).login(
            pb.LoginRequest(email=args.email, password=password), timeout=client.timeout
        )

    reply = client.call(go)
    expires = _time(reply.expires_at)
    path = client.tokens.put(
        client.server,
        {"access_token": reply.access_token, "email": args.email.strip(), "expires_at": expires},
    )
    data = {"server": client.server, "email": args.email.strip(), "expires_at": expires}
    text = f"logged in to {client.server} as {args.email.strip()} until {expires}; token in {path}"
    return Output({**data, "token_file": str(path)}, text)


def _me(client: Client, args: argparse.Namespace, env: Mapping[str, str]) -> Output:
    metadata = client.metadata()

    async def go(channel: Channel) -> pb.UserProfile:
        return await pb.UserServiceStub(channel).get_my_profile(
            pb.GetMyProfileRequest(), metadata=metadata, timeout=client.timeout
        )

    user = client.call(go)
    return Output(_data(user), _fields(_data(user)))


def _characters(client: Client, args: argparse.Namespace, env: Mapping[str, str]) -> Output:
    metadata = client.metadata()
    request = pb.ListCharactersRequest(
        name=args.name,
        name_starts_with=args.name_starts_with,
        modified_since=args.modified_since,
        order_by=args.order_by,
        limit=args.limit,
        offset=args.offset,
    )

    async def go(channel: Channel) -> pb.CharacterPage:
        return await pb.CharacterServiceStub(channel).list_characters(
            request, metadata=metadata, timeout=client.timeout
        )

    page = client.call(go)
    return Output(_data(page), _page_table(page))


def _search(client: Client, args: argparse.Namespace, env: Mapping[str, str]) -> Output:
    metadata = client.metadata()
    request = pb.SearchCharactersRequest(query=args.text, limit=args.limit, offset=args.offset)

    async def go(channel: Channel) -> pb.CharacterPage:
        return await pb.CharacterServiceStub(channel).search_characters(
            request, metadata=metadata, timeout=client.timeout
        )

    page = client.call(go)
    return Output(_data(page), _page_table(page))


def _get(client: Client, args: argparse.Namespace, env: Mapping[str, str]) -> Output:
    metadata = client.metadata()

    async def go(channel: Channel) -> pb.Character:
        return await pb.CharacterServiceStub(channel).get_character(
            pb.GetCharacterRequest(id=args.id), metadata=metadata, timeout=client.timeout
        )

    character = client.call(go)
    data = _data(character)
    shown = {k: v for k, v in data.items() if k not in ("description", "urls", "modified_raw")}
    text = _fields(shown)
    if character.description:
        text += "\n\n" + textwrap.fill(character.description, width=80)
    text += "".join(f"\n{u.type}: {u.url}" for u in character.urls)
    return Output(data, text)


COMMANDS: dict[str, Callable[[Client, argparse.Namespace, Mapping[str, str]], Output]] = {
    "register": _register,
    "login": _login,
    "me": _me,
    "characters": _characters,
    "search": _search,
    "get": _get,
}


RESUMABLE = (Status.UNAVAILABLE, Status.RESOURCE_EXHAUSTED)
WATCH_RETRY_MAX_SECONDS = 30.0


def _watch(client: Client, args: argparse.Namespace) -> int:
    """Print notifications as they come (one line each, or a JSON object a line with
    ``--json``), keeping the last cursor beside the token so the next ``watch`` resumes
    there. A stream that ends (daemon restart, a slow consumer cut loose) is resumed."""
    metadata = client.metadata()
    stored = (client.tokens.get(client.server) or {}).get("watch_cursor")
    cursor: int | None = args.after_cursor if args.after_cursor is not None else stored
    seen, wait = 0, 1.0

    def done() -> bool:
        return args.count is not None and seen >= args.count

    async def stream(channel: Channel) -> None:
        nonlocal cursor, seen, wait
        request = pb.SubscribeRequest(after_cursor=cursor)
        stub = pb.NotificationServiceStub(channel)
        async for note in stub.subscribe(request, metadata=metadata):
            wait = 1.0
            cursor = note.cursor
            if not note.heartbeat:
                seen += 1
                data = _data(note)
                as_json = getattr(args, "json", False)
                line = json.dumps(_plain(data), ensure_ascii=False) if as_json else _note(note)
                print(line, flush=True)
            entry = client.tokens.get(client.server)
            if entry is not None:
                client.tokens.put(client.server, {**entry, "watch_cursor": cursor})
            if done():
                return

    try:
        while not done():
            try:
                client.call(stream, bounded=False)
            except ClientError as exc:
                if not str(exc).startswith(tuple(s.name for s in RESUMABLE)):
                    raise
                print(f"marveld client: {exc}; resuming in {wait:g} s", file=sys.stderr)
                time.sleep(wait)
                wait = min(wait * 2, WATCH_RETRY_MAX_SECONDS)
    except KeyboardInterrupt:
        pass
    return 0


def _watch_ws(client: Client, args: argparse.Namespace, http: str) -> int:
    """``watch --ws``: the same over ``GET /v1/notifications/ws`` (trio-websocket); JSON
    lines as the WebSocket sends them, or the same one-line form as the gRPC watch."""
    metadata = client.metadata()
    stored = (client.tokens.get(client.server) or {}).get("watch_cursor")
    cursor: int | None = args.after_cursor if args.after_cursor is not None else stored
    seen, as_json = 0, getattr(args, "json", False)

    async def watch() -> None:
        nonlocal cursor, seen
        wait = 1.0
        while args.count is None or seen < args.count:
            query = "" if cursor is None else f"?after_cursor={cursor}"
            url = f"ws://{http}/v1/notifications/ws{query}"
            headers = [(b"authorization", metadata["authorization"].encode())]
            try:
                async with open_websocket_url(url, extra_headers=headers) as ws:
                    while args.count is None or seen < args.count:
                        message = json.loads(await ws.get_message())
                        wait, cursor = 1.0, int(message["cursor"])
                        if not message["heartbeat"]:
                            seen += 1
                            print(json.dumps(message) if as_json else _ws_note(message), flush=True)
                        entry = client.tokens.get(client.server)
                        if entry is not None:
                            client.tokens.put(client.server, {**entry, "watch_cursor": cursor})
            except (ConnectionClosed, HandshakeError, OSError) as exc:
                print(
                    f"marveld client: the WebSocket closed ({exc}); resuming in {wait:g} s",
                    file=sys.stderr,
                )
                await trio.sleep(wait)
                wait = min(wait * 2, WATCH_RETRY_MAX_SECONDS)

    with contextlib.suppress(KeyboardInterrupt):
        trio.run(watch)
    return 0


def _ws_note(message: Mapping[str, Any]) -> str:
    kind = str(message.get("type", "")).removeprefix("CHARACTER_").lower()
    marvel_id = (message.get("character") or {}).get("id", "")
    when = message.get("occurred_at") or ""
    return f"{message['cursor']:>8}  {when}  {kind:<8} {marvel_id:>8}  {message.get('message', '')}"


def _note(note: pb.Notification) -> str:
    when = _time(note.occurred_at) or ""
    kind = note.type.name.removeprefix("CHARACTER_").lower()
    marvel_id = note.character.id if note.character is not None else ""
    return f"{note.cursor:>8}  {when}  {kind:<8} {marvel_id:>8}  {note.message}"


def _password(args: argparse.Namespace, env: Mapping[str, str], *, confirm: bool) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if "MARVELD_CLIENT_PASSWORD" in env:
        return env["MARVELD_CLIENT_PASSWORD"]
    if not sys.stdin.isatty():
        raise ClientError(
            "no password: give it with --password-stdin or $MARVELD_CLIENT_PASSWORD, "
            "or run on a terminal to be asked",
            2,
        )
    password = getpass.getpass("password: ")
    if confirm and getpass.getpass("password again: ") != password:
        raise ClientError("the passwords differ", 2)
    return password


# --- output -------------------------------------------------------------------------------------


def _data(message: betterproto2.Message) -> dict[str, Any]:
    """A message as the JSON gateway shows it: proto field names, every field."""
    return message.to_dict(
        output_format=betterproto2.OutputFormat.PYTHON,
        casing=betterproto2.Casing.SNAKE,
        include_default_values=True,
    )


def _plain(value: object) -> object:
    """JSON-ready: times as RFC 3339 text, enums by name (``HIT``; protobuf enums are ints)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, datetime):
        return _time(value)
    if isinstance(value, Enum):
        return value.name
    return value


def _time(value: datetime | None) -> str | None:
    """RFC 3339 in UTC, as protobuf's JSON and the gateway write times."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _fields(data: Mapping[str, Any]) -> str:
    width = max(len(key) for key in data)
    return "\n".join(f"{key:<{width}}  {_cell(value)}" for key, value in data.items())


def _cell(value: object) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if value is None:
        return "-"
    return str(value)


def _page_table(page: pb.CharacterPage) -> str:
    rows = [("ID", "NAME", "MODIFIED", "COMICS")]
    rows += [
        (
            str(c.id),
            c.name,
            c.modified.astimezone(UTC).date().isoformat() if c.modified else "-",
            str(c.comics_available),
        )
        for c in page.characters
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]  # fmt: skip
    status = page.cache_status.name if page.cache_status else "UNSPECIFIED"
    lines += [
        "",
        f"{page.count} of {page.total} from offset {page.offset}; "
        f"cache {status}, {page.cache_age_seconds} s old",
        page.attribution_text,
    ]
    return "\n".join(lines)


# --- the kept tokens ----------------------------------------------------------------------------


def config_dir(env: Mapping[str, str]) -> Path:
    """``$XDG_CONFIG_HOME/marveld``, else ``~/.config/marveld`` (the XDG base directories)."""
    base = env.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):  # the spec says to ignore a relative value
        home = env.get("HOME") or str(Path.home())
        base = os.path.join(home, ".config")
    return Path(base) / "marveld"


class TokenStore:
    """``{"servers": {"host:port": {"access_token", "email", "expires_at"}}}`` in a file only
    its owner can read: a token is sent only to the server that issued it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def get(self, server: str) -> dict[str, Any] | None:
        entry = self._read().get(server)
        return entry if isinstance(entry, dict) and "access_token" in entry else None

    def put(self, server: str, entry: dict[str, Any]) -> Path:
        servers = {**self._read(), server: entry}
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fresh = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        # Created 0600 and filled before it takes the real name: never readable by others.
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump({"servers": servers}, file, indent=2)
            file.flush()
            os.fsync(file.fileno())
        os.replace(fresh, self.path)
        return self.path

    def _read(self) -> dict[str, Any]:
        try:
            with self.path.open() as file:
                if stat.S_IMODE(os.fstat(file.fileno()).st_mode) & 0o077:
                    print(
                        f"marveld client: warning: {self.path} is readable by others; chmod 600 it",
                        file=sys.stderr,
                    )
                data = json.load(file)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ClientError(f"cannot read {self.path}: {exc}") from None
        servers = data.get("servers") if isinstance(data, dict) else None
        return servers if isinstance(servers, dict) else {}
