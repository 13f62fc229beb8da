"""Settings: ``marveld.toml`` plus the environment → frozen, validated dataclasses.

``SETTINGS`` holds one row per setting (section, key, type, default, help). That table drives
parsing, the ``MARVELD_<SECTION>_<KEY>`` overrides (environment > file > default), validation,
the error messages, ``marveld.toml.example`` and the README table. Anything unknown or of the
wrong type stops start-up with one ``ConfigError`` line naming ``section.key`` or the variable.

Secrets (``SECRETS``) never come from the file: each is read from its environment variable,
else from the file named by ``<NAME>_FILE``, else from ``$CREDENTIALS_DIRECTORY/<name>``
(systemd). A secret marked ``many`` holds a comma-separated list. No repr and no error
message ever shows their values.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from secrets import token_urlsafe
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

DEFAULT_CONFIG_PATH = Path("marveld.toml")


class ConfigError(Exception):
    """A setting is wrong. ``str(exc)`` is one line saying which one and how to fix it."""


# --- the settings as values: what the rest of marveld reads ----------------------------------


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int  # 0 = let the system pick a free port

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class GrpcSettings:
    listen: HostPort
    max_connections: int
    handshake_timeout: float
    idle_timeout: float
    keepalive_time: float
    keepalive_timeout: float
    max_concurrent_streams: int
    max_header_list_size: int
    max_resets: int


@dataclass(frozen=True)
class HttpSettings:
    listen: HostPort
    max_connections: int
    handshake_timeout: float
    idle_timeout: float


@dataclass(frozen=True)
class DatabaseSettings:
    path: Path
    url: str | None  # PostgreSQL when set (no password in it), else SQLite at path
    pool_size: int


@dataclass(frozen=True)
class UpstreamSettings:
    url: str  # ends in /v1/public, no trailing slash
    timeout: float  # durations are seconds
    max_attempts: int
    backoff_initial: float
    backoff_max: float
    daily_budget: int
    poller_reserve: int
    breaker_failures: int
    breaker_cooldown: float
    etag_max_age: float

    def __post_init__(self) -> None:
        if self.backoff_initial > self.backoff_max:
            raise ConfigError(
                f"upstream.backoff_initial ({self.backoff_initial:g}s) must not exceed "
                f"upstream.backoff_max ({self.backoff_max:g}s)"
            )
        if self.poller_reserve >= self.daily_budget:
            raise ConfigError(
                f"upstream.poller_reserve ({self.poller_reserve}) must be less than "
                f"upstream.daily_budget ({self.daily_budget})"
            )


@dataclass(frozen=True)
class CacheSettings:
    ttl: float
    stale_while_revalidate: float
    stale_if_error: float
    negative_ttl: float
    memory_entries: int
    memory_megabytes: int
    sweep_interval: float
    fill_lease: float


@dataclass(frozen=True)
class PollerSettings:
    interval: float
    enabled: bool


@dataclass(frozen=True)
class NotificationsSettings:
    queue_size: int
    heartbeat: float
    retention: float
    sweep_interval: float


@dataclass(frozen=True)
class AuthSettings:
    token_ttl: float
    issuer: str


@dataclass(frozen=True)
class RateLimitSettings:
    enabled: bool
    user_rate: int  # requests a second
    user_burst: int
    anonymous_rate: int
    anonymous_burst: int
    login_failures: int
    address_login_failures: int
    login_window: float


@dataclass(frozen=True)
class LogSettings:
    level: str
    format: str


@dataclass(frozen=True)
class ShutdownSettings:
    drain_delay: float
    grace: float


@dataclass(frozen=True)
class ReplicaSettings:
    id: str  # "auto": the host name and the gRPC port (see replica_id)

    def replica_id(self, grpc_port: int) -> str:
        return f"{socket.gethostname()}:{grpc_port}" if self.id == "auto" else self.id


@dataclass(frozen=True, repr=False)
class Secrets:
    marvel_public_key: str
    marvel_private_key: str
    jwt_secret: str
    webhook_secret: str | None
    jwt_previous_secrets: tuple[str, ...] = ()
    database_password: str | None = None

    def __repr__(self) -> str:  # whether each one is there, never its value
        shown = (f"{f.name}=<{'set' if getattr(self, f.name) else 'unset'}>" for f in fields(self))
        return f"Secrets({', '.join(shown)})"


@dataclass(frozen=True)
class Settings:
    grpc: GrpcSettings
    http: HttpSettings
    database: DatabaseSettings
    upstream: UpstreamSettings
    cache: CacheSettings
    poller: PollerSettings
    notifications: NotificationsSettings
    auth: AuthSettings
    ratelimit: RateLimitSettings
    log: LogSettings
    replica: ReplicaSettings
    shutdown: ShutdownSettings
    secrets: Secrets


# --- the settings as data: one row each, the single source of truth ---------------------------


@dataclass(frozen=True)
class Setting:
    section: str
    key: str
    type: Literal["duration", "hostport", "path", "url", "pgurl", "int", "bool", "str"]
    default: Any  # written as in TOML ("1h"), parsed like any other value
    help: str
    bounds: tuple[int, int] | None = None  # "int": lowest and highest allowed
    choices: tuple[str, ...] = ()  # "str": the allowed values, matched case-insensitively
    check: Callable[[Any], None] | None = None  # one more rule; raises ValueError
    zero: bool = False  # "duration": 0 is allowed (none)

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def env(self) -> str:
        return f"MARVELD_{self.section}_{self.key}".upper()


def _replica_name(name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9._:@-]{1,64}", name):
        raise ValueError(
            f"must be 1 to 64 letters, digits or . _ : @ - (a label value), got {_show(name)}"
        )


def _api_root(url: str) -> None:
    if not url.endswith("/v1/public"):
        raise ValueError(f"must end in /v1/public (the API root), got {url!r}")


SETTINGS: tuple[Setting, ...] = (
    Setting("grpc", "listen", "hostport", "127.0.0.1:50051", "Address of the gRPC server."),
    Setting("grpc", "max_connections", "int", 1000,
            "Most client connections open at once; a connection past it is closed at once, "
            "with a WARNING (at most one a minute).", bounds=(1, 1_000_000)),
    Setting("grpc", "handshake_timeout", "duration", "10s",
            "Time a new connection has to send the HTTP/2 preface and its SETTINGS; "
            "then it is closed."),
    Setting("grpc", "idle_timeout", "duration", "5m",
            "A connection with no call open for this long gets GOAWAY and is closed."),
    Setting("grpc", "keepalive_time", "duration", "30s",
            "Time without a frame from the peer after which a connection with calls open "
            "is sent an HTTP/2 PING."),
    Setting("grpc", "keepalive_timeout", "duration", "20s",
            "A peer that does not answer a PING within this time is closed, with its calls."),
    Setting("grpc", "max_concurrent_streams", "int", 1000,
            "Calls open at once on one connection (SETTINGS_MAX_CONCURRENT_STREAMS), long "
            "Subscribe streams included; a call past it is refused (REFUSED_STREAM).",
            bounds=(1, 100_000)),
    Setting("grpc", "max_header_list_size", "int", 16384,
            "Bytes of one call's request headers (SETTINGS_MAX_HEADER_LIST_SIZE); a call "
            "over it is RESOURCE_EXHAUSTED (UNAUTHENTICATED for an oversized token), and the "
            "connection stays usable.", bounds=(4096, 1 << 20)),
    Setting("grpc", "max_resets", "int", 200,
            "Calls one connection may cancel (RST_STREAM) or have refused in 10 s; past it "
            "the connection gets GOAWAY ENHANCE_YOUR_CALM and is closed.",
            bounds=(1, 1_000_000)),
    Setting("http", "listen", "hostport", "127.0.0.1:8080",
            "Address of the HTTP face: metrics, health, WebSocket, webhook, JSON gateway."),
    Setting("http", "max_connections", "int", 1000,
            "Most client connections open at once (WebSockets included); a connection past "
            "it is closed at once, with a WARNING (at most one a minute).",
            bounds=(1, 1_000_000)),
    Setting("http", "handshake_timeout", "duration", "10s",
            "Time a new connection has to send its first request's headers; then it is "
            "closed."),
    Setting("http", "idle_timeout", "duration", "20s",
            "A keep-alive connection with no request for this long is closed. Longer than "
            "clients keep idle connections (httpx 5 s, aiohttp 15 s)."),
    Setting("database", "path", "path", "marveld.db",
            "SQLite database file; a relative path is relative to the working directory."),
    Setting("database", "url", "pgurl", "",
            "PostgreSQL instead of SQLite: a libpq URL such as "
            "`postgresql://marveld@db.internal:5432/marveld?sslmode=verify-full`, without a "
            "password (MARVELD_DATABASE_PASSWORD, or libpq's own PGPASSFILE). A primary "
            "and its standbys: `postgresql://marveld@pg-a:5432,pg-b:5432/marveld?"
            "target_session_attrs=read-write` (docs/scale-out.md). Empty: SQLite "
            "at database.path; the two cannot both be set."),
    Setting("database", "pool_size", "int", 8,
            "Most PostgreSQL connections held open at once (database.url only).",
            bounds=(1, 1000)),
    Setting("upstream", "url", "url", "http://127.0.0.1:8089/v1/public",
            "Root of the Marvel-compatible API; the default is a local `marveld sim`.",
            check=_api_root),
    Setting("upstream", "timeout", "duration", "10s",
            "Time limit of one upstream request (one attempt, its whole body included)."),
    Setting("upstream", "max_attempts", "int", 4,
            "Attempts per upstream call, the first one included.", bounds=(1, 10)),
    Setting("upstream", "backoff_initial", "duration", "0.2s",
            "Wait before the first retry; later retries wait longer, up to backoff_max."),
    Setting("upstream", "backoff_max", "duration", "10s", "Longest wait between two retries."),
    Setting("upstream", "daily_budget", "int", 1000,
            "Upstream calls allowed per UTC day, retries included; never exceeded. On "
            "PostgreSQL, the budget of every replica on the database together.",
            bounds=(1, 100_000_000)),
    Setting("upstream", "poller_reserve", "int", 100,
            "Part of the daily budget only the poller may spend.", bounds=(0, 100_000_000)),
    Setting("upstream", "breaker_failures", "int", 5,
            "Failed upstream calls in a row that open the circuit breaker.", bounds=(1, 1000)),
    Setting("upstream", "breaker_cooldown", "duration", "30s",
            "How long an open breaker fails fast before it lets one trial call through."),
    Setting("upstream", "etag_max_age", "duration", "6h",
            "How long after a full answer its etag is sent (If-None-Match); later asks are "
            "unconditional, so an upstream whose 304s lie cannot keep an old page alive."),
    Setting("cache", "ttl", "duration", "1h", "How long a cached answer stays fresh."),
    Setting("cache", "stale_while_revalidate", "duration", "5m",
            "After ttl: serve the stale answer at once and refresh it in the background."),
    Setting("cache", "stale_if_error", "duration", "1d",
            "After ttl: serve the stale answer when the upstream fails or the budget is spent."),
    Setting("cache", "negative_ttl", "duration", "1m",
            "How long an empty answer (no characters, unknown id) stays fresh."),
    Setting("cache", "memory_entries", "int", 10_000,
            "Most answers kept in the memory tier; 0 turns the tier off.",
            bounds=(0, 10_000_000)),
    Setting("cache", "memory_megabytes", "int", 64,
            "Most memory the memory tier may hold, in MiB (answers and their decoded pages).",
            bounds=(0, 1_000_000)),
    Setting("cache", "sweep_interval", "duration", "5m",
            "Time between two sweeps of expired answers out of the SQLite tier."),
    Setting("cache", "fill_lease", "duration", "3s",
            "With PostgreSQL: the lease of the replica asking the upstream for a missing "
            "answer, renewed while it asks; identical misses on the other replicas wait "
            "for its answer, or for its lease to run out (it died), then one of them asks."),
    Setting("poller", "interval", "duration", "24h", "Time between two syncs with the upstream."),
    Setting("poller", "enabled", "bool", True,
            "Sync in the background: a full sync on first start, then a poll every interval. "
            "Off: only TriggerSync and webhooks bring changes."),
    Setting("notifications", "queue_size", "int", 256,
            "Notifications queued per live subscriber; one that falls this far behind is "
            "disconnected with its resume cursor.", bounds=(1, 100_000)),
    Setting("notifications", "heartbeat", "duration", "15s",
            "Time without notifications after which a live stream gets a heartbeat carrying "
            "its cursor. WebSockets are pinged as often; one whose peer sends nothing for "
            "two heartbeats is closed."),
    Setting("notifications", "retention", "duration", "7d",
            "How long notifications are kept; resuming from an older cursor is "
            "FAILED_PRECONDITION."),
    Setting("notifications", "sweep_interval", "duration", "1h",
            "Time between two sweeps of notifications past retention."),
    Setting("auth", "token_ttl", "duration", "1h", "Lifetime of an access token."),
    Setting("auth", "issuer", "str", "marveld", "Issuer (`iss` claim) of access tokens."),
    Setting("ratelimit", "enabled", "bool", True,
            "Rate limits and the login throttle; false turns every limiter off (benchmarks)."),
    Setting("ratelimit", "user_rate", "int", 10,
            "Requests a second each signed-in user may make on average (character, "
            "notification and profile calls).", bounds=(1, 1_000_000)),
    Setting("ratelimit", "user_burst", "int", 40,
            "Requests a signed-in user may make at once before user_rate applies.",
            bounds=(1, 1_000_000)),
    Setting("ratelimit", "anonymous_rate", "int", 1,
            "Unauthenticated calls (Register, Login) a second from one client address "
            "(IPv6: one /64).", bounds=(1, 1_000_000)),
    Setting("ratelimit", "anonymous_burst", "int", 10,
            "Unauthenticated calls one client address may make at once.", bounds=(1, 1_000_000)),
    Setting("ratelimit", "login_failures", "int", 5,
            "Failed logins per account within login_window before RESOURCE_EXHAUSTED; a "
            "success starts the count over.", bounds=(1, 1_000_000)),
    Setting("ratelimit", "address_login_failures", "int", 20,
            "Failed logins per client address within login_window, whatever the accounts.",
            bounds=(1, 1_000_000)),
    Setting("ratelimit", "login_window", "duration", "15m",
            "The window of both login failure counts."),
    Setting("log", "level", "str", "info", "Least severe level that is logged.",
            choices=("debug", "info", "warning", "error")),
    Setting("log", "format", "str", "auto",
            "Log line format; auto = text when stderr is a terminal, json otherwise.",
            choices=("auto", "text", "json")),
    Setting("replica", "id", "str", "auto",
            "This replica's name in its log lines (with PostgreSQL) and in the metric "
            "marveld_replica_info; auto = the host name and the gRPC port.",
            check=_replica_name),
    Setting("shutdown", "drain_delay", "duration", "0s",
            "On SIGTERM, how long the daemon goes on serving new calls after it has turned "
            "not ready (/readyz 503, health NOT_SERVING), so a load balancer's health checks "
            "see it first; behind one, at least its check interval times its fall count.",
            zero=True),
    Setting("shutdown", "grace", "duration", "10s",
            "Then, how long calls already under way have to finish (notification streams "
            "and WebSockets end at once, with their resume cursor); what is left is cut."),
)  # fmt: skip

_SECTIONS: dict[str, Callable[..., Any]] = {
    "grpc": GrpcSettings, "http": HttpSettings, "database": DatabaseSettings,
    "upstream": UpstreamSettings, "cache": CacheSettings, "poller": PollerSettings,
    "notifications": NotificationsSettings,
    "auth": AuthSettings, "ratelimit": RateLimitSettings, "log": LogSettings,
    "replica": ReplicaSettings, "shutdown": ShutdownSettings,
}  # fmt: skip


@dataclass(frozen=True)
class SecretSpec:
    name: str  # the environment variable; the Secrets field is derived from it
    help: str
    required: bool = True
    min_bytes: int = 1  # of each value, when many
    many: bool = False  # a comma-separated list (commas or new lines in a file)

    @property
    def field(self) -> str:  # MARVELD_JWT_SECRET -> jwt_secret
        return self.name.lower().removeprefix("marveld_")


SECRETS: tuple[SecretSpec, ...] = (
    SecretSpec("MARVEL_PUBLIC_KEY", "Marvel API public key (`apikey`)."),
    SecretSpec("MARVEL_PRIVATE_KEY", "Marvel API private key."),
    SecretSpec("MARVELD_JWT_SECRET", "Key that signs access tokens, 32+ bytes.", min_bytes=32),
    SecretSpec("MARVELD_WEBHOOK_SECRET", "HMAC key of the webhook receiver.", required=False),
    SecretSpec("MARVELD_JWT_PREVIOUS_SECRETS",
               "Former signing keys, comma-separated, 32+ bytes each: tokens they signed are "
               "accepted until they expire. Rotate by moving MARVELD_JWT_SECRET here and "
               "setting a new one; drop it after auth.token_ttl.",
               required=False, min_bytes=32, many=True),
    SecretSpec("MARVELD_DATABASE_PASSWORD",
               "Password of the PostgreSQL role in database.url (unless libpq finds one in "
               "PGPASSFILE or the server trusts the client).", required=False),
)  # fmt: skip


# --- one parser per type: a TOML value (or environment text made TOML-like) → the value -------

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)")
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")
_HOSTPORT = re.compile(
    r"(?:\[(?P<ipv6>[0-9a-f:.]+)\]|(?P<host>[\w.-]+)):(?P<port>[0-9]+)", re.I | re.A
)
_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _duration(raw: object, s: Setting) -> float:
    if isinstance(raw, str) and _DURATION.fullmatch(raw):
        seconds = sum(float(n) * _UNITS[unit] for n, unit in _DURATION_PART.findall(raw))
    elif isinstance(raw, int | float) and not isinstance(raw, bool):
        seconds = float(raw)
    else:
        raise ValueError(f'expected seconds or a duration like "30s", "1h30m"; got {_show(raw)}')
    if s.zero and seconds == 0:
        return 0.0
    if not (math.isfinite(seconds) and seconds > 0):
        least = "0 seconds or more" if s.zero else "more than 0 seconds"
        raise ValueError(f"must be {least}, got {_show(raw)}")
    return seconds


def _hostport(raw: object, s: Setting) -> HostPort:
    match = _HOSTPORT.fullmatch(raw) if isinstance(raw, str) else None
    if not match or int(match["port"]) > 65535:
        raise ValueError(f'expected "host:port" or "[ipv6]:port", port 0-65535; got {_show(raw)}')
    return HostPort(match["ipv6"] or match["host"], int(match["port"]))


def _path(raw: object, s: Setting) -> Path:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"expected a file path, got {_show(raw)}")
    return Path(raw).expanduser()


def _url(raw: object, s: Setting) -> str:
    parts = urlsplit(raw) if isinstance(raw, str) else None
    if not parts or parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise ValueError(f"expected an http:// or https:// URL, got {_show(raw)}")
    return str(raw).rstrip("/")


def _pgurl(raw: object, s: Setting) -> str | None:
    if not isinstance(raw, str):
        raise ValueError(f"expected a postgresql:// URL, got {_show(raw)}")
    if not raw.strip():
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("expected a postgresql:// URL (libpq's URL form)")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    # libpq takes several hosts (`a:5432,b:5432`), tried in order: one per server of a
    # primary and its standbys, with target_session_attrs=read-write to find the primary.
    for host in hosts.split(","):
        try:
            urlsplit(f"//{host}").port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            raise ValueError(f"not a valid URL: check the host and port {host!r}") from None
    if ":" in userinfo or "password" in parse_qs(parts.query):  # the message must not repeat it
        raise ValueError(
            "the URL holds a password: put it in MARVELD_DATABASE_PASSWORD (or its _FILE, or "
            "the systemd credential), or in libpq's PGPASSFILE, and leave it out of the URL"
        )
    return raw


def _int(raw: object, s: Setting) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise ValueError(f"expected an integer, got {_show(raw)}")
    if s.bounds and not s.bounds[0] <= raw <= s.bounds[1]:
        raise ValueError(f"must be from {s.bounds[0]} to {s.bounds[1]}, got {raw}")
    return raw


def _bool(raw: object, s: Setting) -> bool:
    if not isinstance(raw, bool):
        raise ValueError(f"expected true or false, got {_show(raw)}")
    return raw


def _str(raw: object, s: Setting) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError(f"expected a non-empty string, got {_show(raw)}")
    if s.choices and raw.lower() not in s.choices:
        raise ValueError(f"must be one of {', '.join(s.choices)}; got {_show(raw)}")
    return raw.lower() if s.choices else raw


_PARSERS: dict[str, Callable[[object, Setting], object]] = {
    "duration": _duration, "hostport": _hostport, "path": _path, "url": _url, "pgurl": _pgurl,
    "int": _int, "bool": _bool, "str": _str,
}  # fmt: skip


def _from_env(s: Setting, text: str) -> object:
    """Environment values are text: give the parser what TOML would have given it."""
    text = text.strip()
    if s.type == "int" and re.fullmatch(r"[+-]?[0-9]+", text):
        return int(text)
    if s.type == "bool" and text.lower() in _BOOLS:
        return _BOOLS[text.lower()]
    if s.type == "duration" and re.fullmatch(r"[+-]?[0-9]+(?:\.[0-9]+)?", text):
        return float(text)
    return text


def _parse(s: Setting, raw: object, where: str) -> object:
    try:
        value = _PARSERS[s.type](raw, s)
        if s.check:
            s.check(value)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return value


def parse_setting(name: str, raw: object, where: str) -> object:
    """``raw`` read and checked as the setting ``name`` (``database.url``) reads its value,
    for a command that takes one as an argument; ConfigError names ``where``."""
    (spec,) = (s for s in SETTINGS if s.name == name)
    return _parse(spec, raw, where)


# --- loading -----------------------------------------------------------------------------------


def load_settings(path: Path | None, env: Mapping[str, str], *, demo: bool = False) -> Settings:
    """Read *path* (None: ``marveld.toml`` if there is one), apply *env*, check everything.

    ``demo=True`` fills each missing secret with a throwaway random value instead of failing.
    """
    source = path or DEFAULT_CONFIG_PATH
    raw = _read_toml(source, optional=path is None)
    _check_file(raw, str(source))
    _check_env(env)
    values: dict[str, dict[str, object]] = {section: {} for section in _SECTIONS}
    for s in SETTINGS:
        if s.env in env:
            value, where = _from_env(s, env[s.env]), f"{s.env} ({s.name})"
        elif s.key in raw.get(s.section, {}):
            value, where = raw[s.section][s.key], f"{source}: {s.name}"
        else:
            value, where = s.default, f"default of {s.name}"
        values[s.section][s.key] = _parse(s, value, where)
    database_path_set = "MARVELD_DATABASE_PATH" in env or "path" in raw.get("database", {})
    if values["database"]["url"] is not None and database_path_set:
        raise ConfigError(
            "database.url and database.path are both set: database.url means PostgreSQL, "
            "database.path SQLite; keep the one you mean"
        )
    sections = {name: make(**values[name]) for name, make in _SECTIONS.items()}
    return Settings(**sections, secrets=_load_secrets(env, demo=demo))


def _read_toml(path: Path, *, optional: bool) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        if optional:
            return {}
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _hint(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(known)})"


def _refuse_secret(word: str, where: str) -> None:
    if any(part in word.lower() for part in ("secret", "key", "password")):
        raise ConfigError(
            f"{where}: {word} looks like a secret, and secrets never go in the config file: set "
            f"{', '.join(spec.name for spec in SECRETS)} in the environment instead "
            "(or <NAME>_FILE, or systemd credentials)"
        )


def _check_file(raw: dict[str, Any], source: str) -> None:
    for section in sorted(raw):
        if section not in _SECTIONS:
            _refuse_secret(section, source)
            hint = _hint(section, list(_SECTIONS))
            raise ConfigError(f"{source}: unknown section [{section}]{hint}")
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{source}: {section} must be a section ([{section}]), not a value")
        known = [s.key for s in SETTINGS if s.section == section]
        for key in sorted(raw[section].keys() - set(known)):
            _refuse_secret(key, f"{source}: [{section}]")
            raise ConfigError(f"{source}: [{section}] unknown key: {key}{_hint(key, known)}")


def _check_env(env: Mapping[str, str]) -> None:
    """MARVELD_<SECTION>_* must be a setting: a typo would otherwise be ignored silently."""
    known = [s.env for s in SETTINGS]
    known += [spec.name + end for spec in SECRETS for end in ("", "_FILE")]
    prefixes = tuple(f"MARVELD_{section.upper()}_" for section in _SECTIONS)
    for name in sorted(env):
        if name.startswith(prefixes) and name not in known:
            raise ConfigError(f"unknown setting in the environment: {name}{_hint(name, known)}")


def _load_secrets(env: Mapping[str, str], *, demo: bool) -> Secrets:
    values: dict[str, Any] = {}
    for spec in SECRETS:
        if spec.many:
            values[spec.field] = _split_secret(spec, _read_secret(spec, env))
            continue
        value = _read_secret(spec, env) or (token_urlsafe(32) if demo else None)
        if value is None and spec.required:
            raise ConfigError(
                f"{spec.name} is not set: set it in the environment, or put the path of a file "
                f"holding it in {spec.name}_FILE, or provide the systemd credential "
                f"$CREDENTIALS_DIRECTORY/{spec.name.lower()}"
            )
        if value is not None and len(value.encode()) < spec.min_bytes:
            raise ConfigError(
                f"{spec.name} must be at least {spec.min_bytes} bytes long; make one with: "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        values[spec.field] = value
    return Secrets(**values)


def _split_secret(spec: SecretSpec, value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    parts = [part.strip() for part in re.split(r"[,\n]", value)]
    for number, part in enumerate(parts, 1):
        if len(part.encode()) < spec.min_bytes:
            raise ConfigError(
                f"{spec.name}: value {number} of {len(parts)} must be at least "
                f"{spec.min_bytes} bytes long (values are separated by commas)"
            )
    return tuple(parts)


def _read_secret(spec: SecretSpec, env: Mapping[str, str]) -> str | None:
    if spec.name in env:
        if not env[spec.name]:
            raise ConfigError(f"{spec.name} is set but empty")
        return env[spec.name]
    if f"{spec.name}_FILE" in env:
        return _read_secret_file(Path(env[f"{spec.name}_FILE"]), f"{spec.name}_FILE")
    directory = env.get("CREDENTIALS_DIRECTORY")
    if directory and (credential := Path(directory) / spec.name.lower()).exists():
        return _read_secret_file(credential, f"systemd credential {spec.name.lower()}")
    return None


def _read_secret_file(path: Path, where: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:  # its message would quote a byte of the secret
        raise ConfigError(f"{where}: {path} is not UTF-8 text") from None
    if not value:
        raise ConfigError(f"{where}: {path} is empty")
    return value


# --- documentation, generated from the same tables ---------------------------------------------


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return json.dumps(value) if isinstance(value, str) else str(value)


def _type_text(s: Setting) -> str:
    if s.bounds:
        return f"integer, {s.bounds[0]} to {s.bounds[1]}"
    if s.choices:
        return f"one of {', '.join(s.choices)}"
    names = {"hostport": "host:port (port 0: any free port)", "str": "text",
             "pgurl": "postgresql:// URL or empty"}  # fmt: skip
    return names.get(s.type, s.type)


def example_toml() -> str:
    """The commented example file: every key with its default, help and environment variable."""
    lines = [
        "# marveld.toml: every setting, with its default. Generated by marveld/config.py",
        "# (python -m marveld.config > marveld.toml.example); do not edit by hand.",
        "# Uncomment what you change. MARVELD_<SECTION>_<KEY> in the environment wins over this.",
        '# Durations: seconds (30, 0.5) or text: "500ms", "30s", "15m", "24h", "1d", "1h30m".',
        "# Secrets never go here. Give them in the environment, as <NAME>_FILE (a file path),",
        "# or as systemd credentials ($CREDENTIALS_DIRECTORY/<name in lower case>):",
        *(f"#   {spec.name}: {spec.help}" for spec in SECRETS),
    ]
    section = ""
    for s in SETTINGS:
        lines += ["", f"[{s.section}]"] if s.section != section else [""]
        section = s.section
        lines += [f"# {s.help}", f"# {_type_text(s)}; env {s.env}"]
        lines.append(f"# {s.key} = {_toml(s.default)}")
    return "\n".join(lines) + "\n"


def settings_reference_markdown() -> str:
    """A Markdown reference of every setting and secret, for the README."""

    def row(*cells: str) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    lines = [row("setting", "environment variable", "type", "default", "description")]
    lines.append(row(*["---"] * 5))
    for s in SETTINGS:
        default = f"`{_toml(s.default)}`"
        lines.append(row(f"`{s.name}`", f"`{s.env}`", _type_text(s), default, s.help))
    lines += [
        "",
        "Secrets never go in the file. Each is read from its variable, else from the file named",
        "by `<NAME>_FILE`, else from systemd's `$CREDENTIALS_DIRECTORY/<name in lower case>`.",
        "",
        row("secret", "required", "description"),
        row(*["---"] * 3),
    ]
    lines += [row(f"`{s.name}`", "yes" if s.required else "no", s.help) for s in SECRETS]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(example_toml(), end="")
