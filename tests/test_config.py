"""Settings: marveld.toml + environment → frozen, validated dataclasses.

Rules: every test passes an explicit env dict (never os.environ) and writes files under
tmp_path; each error is checked for naming the setting (section.key) or the variable.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from marveld import config
from marveld.config import (
    SECRETS,
    SETTINGS,
    ConfigError,
    HostPort,
    Settings,
    example_toml,
    load_settings,
    settings_reference_markdown,
)

PUBLIC = "pub-7f3a9c1e"
PRIVATE = "priv-d41d8cd98f00b204"
JWT = "jwt-" + "s3cr3t" * 8
WEBHOOK = "hook-0a1b2c3d4e"
SECRET_ENV = {"MARVEL_PUBLIC_KEY": PUBLIC, "MARVEL_PRIVATE_KEY": PRIVATE, "MARVELD_JWT_SECRET": JWT}
ALL_SECRET_VALUES = (PUBLIC, PRIVATE, JWT, WEBHOOK)
ROOT = Path(__file__).resolve().parents[1]


def load(tmp_path: Path, toml: str = "", **env: str) -> Settings:
    """Load *toml* (written to a file) with the test secrets plus *env*."""
    path = tmp_path / "marveld.toml"
    path.write_text(toml)
    return load_settings(path, {**SECRET_ENV, **env})


def error(tmp_path: Path, toml: str = "", **env: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, toml, **env)
    message = str(info.value)
    assert "\n" not in message
    assert not any(value in message for value in ALL_SECRET_VALUES)
    return message


# --- files and precedence ----------------------------------------------------------------------


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no marveld.toml here: the default path is optional
    s = load_settings(None, SECRET_ENV)
    assert s.grpc.listen == HostPort("127.0.0.1", 50051)
    assert s.http.listen == HostPort("127.0.0.1", 8080)
    assert s.database.path == Path("marveld.db")
    assert s.upstream == config.UpstreamSettings(
        url="http://127.0.0.1:8089/v1/public",
        timeout=10.0,
        max_attempts=4,
        backoff_initial=0.2,
        backoff_max=10.0,
        daily_budget=1000,
        poller_reserve=100,
        breaker_failures=5,
        breaker_cooldown=30.0,
        etag_max_age=6 * 3600.0,
    )
    assert s.cache == config.CacheSettings(
        ttl=3600.0,
        stale_while_revalidate=300.0,
        stale_if_error=86400.0,
        negative_ttl=60.0,
        memory_entries=10_000,
        memory_megabytes=64,
        sweep_interval=300.0,
        fill_lease=3.0,
    )
    assert s.poller.interval == 86400.0
    assert s.auth == config.AuthSettings(token_ttl=3600.0, issuer="marveld")
    assert s.ratelimit == config.RateLimitSettings(
        enabled=True,
        user_rate=10,
        user_burst=40,
        anonymous_rate=1,
        anonymous_burst=10,
        login_failures=5,
        address_login_failures=20,
        login_window=900.0,
    )
    assert s.log == config.LogSettings(level="info", format="auto")
    assert s.secrets == config.Secrets(PUBLIC, PRIVATE, JWT, None)


def test_rate_limits_turn_off_from_the_environment(tmp_path: Path) -> None:
    assert load(tmp_path, MARVELD_RATELIMIT_ENABLED="false").ratelimit.enabled is False
    assert load(tmp_path, "[ratelimit]\nenabled = false\n").ratelimit.enabled is False
    assert "(ratelimit.user_rate): must be from 1 to 1000000, got 0" in error(
        tmp_path, MARVELD_RATELIMIT_USER_RATE="0"
    )


def test_the_default_path_is_read_when_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "marveld.toml").write_text("[cache]\nttl = 60\n")
    assert load_settings(None, SECRET_ENV).cache.ttl == 60.0


def test_an_explicit_file_must_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"nope\.toml: config file not found"):
        load_settings(missing, SECRET_ENV)


def test_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load_settings(tmp_path, SECRET_ENV)  # a directory
    assert "not valid TOML" in error(tmp_path, "[cache\nttl = 1")


def test_values_from_the_file(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        """
        [grpc]
        listen = "0.0.0.0:9000"
        [http]
        listen = "[::1]:0"
        [database]
        path = "/var/lib/marveld/marveld.db"
        [upstream]
        url = "https://marvel.example.com/v1/public/"
        timeout = 2.5
        max_attempts = 2
        backoff_initial = "100ms"
        backoff_max = "1m"
        [cache]
        ttl = "15m"
        [poller]
        interval = "1h30m"
        [auth]
        token_ttl = "1d"
        issuer = "marveld.example.com"
        [log]
        level = "warning"
        format = "json"
        """,
    )
    assert s.grpc.listen == HostPort("0.0.0.0", 9000)
    assert s.http.listen == HostPort("::1", 0)
    assert s.database.path == Path("/var/lib/marveld/marveld.db")
    assert s.upstream == config.UpstreamSettings(
        "https://marvel.example.com/v1/public", 2.5, 2, 0.1, 60.0, 1000, 100, 5, 30.0, 21600.0
    )
    assert (s.cache.ttl, s.poller.interval, s.auth.token_ttl) == (900.0, 5400.0, 86400.0)
    assert s.auth.issuer == "marveld.example.com"
    assert (s.log.level, s.log.format) == ("warning", "json")


def test_the_environment_wins_over_the_file(tmp_path: Path) -> None:
    s = load(
        tmp_path,
        '[cache]\nttl = "1h"\n[upstream]\nmax_attempts = 2\n[log]\nlevel = "info"\n',
        MARVELD_CACHE_TTL="30s",
        MARVELD_UPSTREAM_MAX_ATTEMPTS="7",
        MARVELD_LOG_LEVEL="DEBUG",
        MARVELD_GRPC_LISTEN="127.0.0.1:0",
        MARVELD_DATABASE_PATH="/tmp/x.db",
        MARVELD_POLLER_INTERVAL="90",
        MARVELD_UPSTREAM_URL="http://sim:8089/v1/public",
    )
    assert s.cache.ttl == 30.0
    assert s.upstream.max_attempts == 7
    assert s.log.level == "debug"
    assert s.grpc.listen == HostPort("127.0.0.1", 0)
    assert s.database.path == Path("/tmp/x.db")
    assert s.poller.interval == 90.0
    assert s.upstream.url == "http://sim:8089/v1/public"


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = load(tmp_path)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.cache.ttl = 1.0  # type: ignore[misc]


# --- types -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("30s", 30.0),
        ("15m", 900.0),
        ("24h", 86400.0),
        ("1d", 86400.0),
        ("500ms", 0.5),
        ("1h30m", 5400.0),
        ("0.2s", 0.2),
        (30, 30.0),
        (0.5, 0.5),
    ],
)
def test_durations(tmp_path: Path, raw: object, seconds: float) -> None:
    toml = f"[cache]\nttl = {raw!r}\n".replace("'", '"')
    assert load(tmp_path, toml).cache.ttl == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "seconds"), [("45", 45.0), ("2.5", 2.5), (" 2m ", 120.0)])
def test_durations_from_the_environment(tmp_path: Path, text: str, seconds: float) -> None:
    assert load(tmp_path, MARVELD_CACHE_TTL=text).cache.ttl == seconds


@pytest.mark.parametrize(
    ("toml_value", "expected"),
    [
        ('"abc"', "expected seconds or a duration"),
        ('"10"', "expected seconds or a duration"),  # TOML has numbers: a quoted one is a typo
        ('"1x"', "expected seconds or a duration"),
        ('"1h 30m"', "expected seconds or a duration"),
        ("true", "expected seconds or a duration"),
        ("0", "must be more than 0 seconds"),
        ('"0s"', "must be more than 0 seconds"),
        ("-1", "must be more than 0 seconds"),
        ("inf", "must be more than 0 seconds"),
    ],
)
def test_bad_durations_name_the_key(tmp_path: Path, toml_value: str, expected: str) -> None:
    message = error(tmp_path, f"[cache]\nttl = {toml_value}\n")
    assert message.startswith(f"{tmp_path / 'marveld.toml'}: cache.ttl: {expected}")


def test_bad_environment_value_names_the_variable_and_the_key(tmp_path: Path) -> None:
    message = error(tmp_path, MARVELD_AUTH_TOKEN_TTL="soon")
    assert message.startswith("MARVELD_AUTH_TOKEN_TTL (auth.token_ttl): expected seconds")
    message = error(tmp_path, MARVELD_UPSTREAM_MAX_ATTEMPTS="four")
    assert message == (
        "MARVELD_UPSTREAM_MAX_ATTEMPTS (upstream.max_attempts): expected an integer, got 'four'"
    )
    assert "must be more than 0" in error(tmp_path, MARVELD_CACHE_TTL="-5")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:50051", HostPort("127.0.0.1", 50051)),
        ("localhost:8080", HostPort("localhost", 8080)),
        ("0.0.0.0:0", HostPort("0.0.0.0", 0)),
        ("[::1]:50051", HostPort("::1", 50051)),
        ("[::]:65535", HostPort("::", 65535)),
    ],
)
def test_hostport_forms(tmp_path: Path, text: str, expected: HostPort) -> None:
    listen = load(tmp_path, f'[grpc]\nlisten = "{text}"\n').grpc.listen
    assert listen == expected
    assert str(listen) == text


@pytest.mark.parametrize(
    "toml_value",
    ['"127.0.0.1"', '"127.0.0.1:65536"', '"host:-1"', '"host:http"', '":8080"', '"::1:80"',
     '"[zz]:80"', '"[::1]"', "50051"],
)  # fmt: skip
def test_bad_hostports(tmp_path: Path, toml_value: str) -> None:
    message = error(tmp_path, f"[http]\nlisten = {toml_value}\n")
    assert 'http.listen: expected "host:port" or "[ipv6]:port", port 0-65535' in message


def test_upstream_url(tmp_path: Path) -> None:
    url = load(tmp_path, '[upstream]\nurl = "https://api.example.com/v1/public//"\n').upstream.url
    assert url == "https://api.example.com/v1/public"
    message = error(tmp_path, '[upstream]\nurl = "http://api.example.com/v1"\n')
    assert message.endswith(
        "upstream.url: must end in /v1/public (the API root), got 'http://api.example.com/v1'"
    )
    for bad in ("ftp://example.com/v1/public", "example.com/v1/public", "http:///v1/public"):
        message = error(tmp_path, MARVELD_UPSTREAM_URL=bad)
        assert message.startswith(
            "MARVELD_UPSTREAM_URL (upstream.url): expected an http:// or https:// URL"
        )


def test_int_bounds_and_types(tmp_path: Path) -> None:
    for bad in (0, 11):
        message = error(tmp_path, f"[upstream]\nmax_attempts = {bad}\n")
        assert message.endswith(f"upstream.max_attempts: must be from 1 to 10, got {bad}")
    for wrong_type in ('"4"', "true", "4.0"):
        message = error(tmp_path, f"[upstream]\nmax_attempts = {wrong_type}\n")
        assert "upstream.max_attempts: expected an integer" in message


def test_choices_and_strings(tmp_path: Path) -> None:
    assert load(tmp_path, '[log]\nlevel = "ERROR"\n').log.level == "error"
    message = error(tmp_path, '[log]\nlevel = "verbose"\n')
    assert message.endswith("log.level: must be one of debug, info, warning, error; got 'verbose'")
    assert "(log.format): must be one of auto, text, json" in error(
        tmp_path, MARVELD_LOG_FORMAT="xml"
    )
    assert "auth.issuer: expected a non-empty string" in error(tmp_path, '[auth]\nissuer = ""\n')
    assert "database.path: expected a file path" in error(tmp_path, "[database]\npath = 3\n")


def test_bool_type() -> None:
    # the text forms the environment may use (ratelimit.enabled is a bool)
    flag = config.Setting("demo", "flag", "bool", False, "A flag.")
    for text, value in [("true", True), ("YES", True), ("1", True), ("false", False),
                        ("no", False), ("0", False)]:  # fmt: skip
        assert config._parse(flag, config._from_env(flag, text), "x") is value
    assert config._parse(flag, True, "x") is True
    with pytest.raises(ConfigError, match=r"^MARVELD_DEMO_FLAG: expected true or false, got 'on'"):
        config._parse(flag, config._from_env(flag, "on"), "MARVELD_DEMO_FLAG")
    with pytest.raises(ConfigError, match="expected true or false, got 1"):
        config._parse(flag, 1, "demo.flag")


def test_backoff_initial_must_not_exceed_backoff_max(tmp_path: Path) -> None:
    message = error(tmp_path, '[upstream]\nbackoff_initial = "20s"\n')
    assert message == "upstream.backoff_initial (20s) must not exceed upstream.backoff_max (10s)"


# --- unknown names -----------------------------------------------------------------------------


def test_unknown_key_with_a_hint(tmp_path: Path) -> None:
    message = error(tmp_path, '[cache]\ntll = "1h"\n')
    assert message == f"{tmp_path / 'marveld.toml'}: [cache] unknown key: tll (did you mean ttl?)"
    message = error(tmp_path, "[upstream]\nzzz = 1\n")
    assert message.endswith(
        "[upstream] unknown key: zzz (known: url, timeout, max_attempts, backoff_initial,"
        " backoff_max, daily_budget, poller_reserve, breaker_failures, breaker_cooldown,"
        " etag_max_age)"
    )


def test_unknown_section(tmp_path: Path) -> None:
    message = error(tmp_path, '[cahce]\nttl = "1h"\n')
    assert message.endswith("unknown section [cahce] (did you mean cache?)")
    assert "cache must be a section ([cache]), not a value" in error(tmp_path, "cache = 5\n")


def test_unknown_settings_in_the_environment(tmp_path: Path) -> None:
    message = error(tmp_path, MARVELD_CACHE_TLL="1h")
    assert message == (
        "unknown setting in the environment: MARVELD_CACHE_TLL (did you mean MARVELD_CACHE_TTL?)"
    )
    message = error(tmp_path, MARVELD_AUTH_JWT_SECRET=JWT)
    assert message.startswith("unknown setting in the environment: MARVELD_AUTH_JWT_SECRET")
    # not a known section: not ours to judge (a launcher's MARVELD_CONFIG, say)
    load(tmp_path, MARVELD_CONFIG="/etc/marveld.toml")


def test_secrets_in_the_file_are_refused(tmp_path: Path) -> None:
    for toml in (
        f'[secrets]\njwt_secret = "{JWT}"\n',
        f'[auth]\njwt_secret = "{JWT}"\n',
        f'[upstream]\nprivate_key = "{PRIVATE}"\n',
        f'marvel_public_key = "{PUBLIC}"\n',
    ):
        message = error(tmp_path, toml)
        assert "looks like a secret, and secrets never go in the config file" in message
        assert "MARVELD_JWT_SECRET" in message
        assert "in the environment" in message


# --- secrets -----------------------------------------------------------------------------------


def secret_files(tmp_path: Path, **files: str) -> dict[str, str]:
    """Write each secret to tmp_path/<name> and return the env pointing at it."""
    for name, value in files.items():
        (tmp_path / name).write_text(value)
    return {name.upper() + "_FILE": str(tmp_path / name) for name in files}


def test_secrets_from_the_environment(tmp_path: Path) -> None:
    secrets = load(tmp_path, MARVELD_WEBHOOK_SECRET=WEBHOOK).secrets
    assert secrets == config.Secrets(PUBLIC, PRIVATE, JWT, WEBHOOK)


def test_secrets_from_files(tmp_path: Path) -> None:
    env = secret_files(
        tmp_path,
        marvel_public_key=PUBLIC + "\n",
        marvel_private_key=PRIVATE + "\r\n",
        marveld_jwt_secret=JWT,
        marveld_webhook_secret=WEBHOOK + "\n",
    )
    path = tmp_path / "marveld.toml"
    path.write_text("")
    assert load_settings(path, env).secrets == config.Secrets(PUBLIC, PRIVATE, JWT, WEBHOOK)


def test_secrets_from_systemd_credentials(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for name, value in [("marvel_public_key", PUBLIC), ("marvel_private_key", PRIVATE),
                        ("marveld_jwt_secret", JWT + "\n")]:  # fmt: skip
        (credentials / name).write_text(value)
    path = tmp_path / "marveld.toml"
    path.write_text("")
    secrets = load_settings(path, {"CREDENTIALS_DIRECTORY": str(credentials)}).secrets
    assert secrets == config.Secrets(PUBLIC, PRIVATE, JWT, None)


def test_secret_precedence_variable_then_file_then_credentials(tmp_path: Path) -> None:
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "marveld_jwt_secret").write_text("c" * 32)
    (tmp_path / "jwt").write_text("f" * 32)
    base = {k: v for k, v in SECRET_ENV.items() if k != "MARVELD_JWT_SECRET"}
    everything = {
        **base,
        "CREDENTIALS_DIRECTORY": str(credentials),
        "MARVELD_JWT_SECRET_FILE": str(tmp_path / "jwt"),
        "MARVELD_JWT_SECRET": "v" * 32,
    }
    path = tmp_path / "marveld.toml"
    path.write_text("")

    def jwt(env: dict[str, str]) -> str:
        return load_settings(path, env).secrets.jwt_secret

    assert jwt(everything) == "v" * 32
    del everything["MARVELD_JWT_SECRET"]
    assert jwt(everything) == "f" * 32
    del everything["MARVELD_JWT_SECRET_FILE"]
    assert jwt(everything) == "c" * 32


def test_unreadable_secret_file_names_the_variable_and_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-file"
    message = error(tmp_path, MARVELD_WEBHOOK_SECRET_FILE=str(missing))
    assert message == (
        f"MARVELD_WEBHOOK_SECRET_FILE: cannot read {missing}: No such file or directory"
    )
    (tmp_path / "binary").write_bytes(b"\xff\xfe" + JWT.encode())
    message = error(tmp_path, MARVELD_WEBHOOK_SECRET_FILE=str(tmp_path / "binary"))
    assert message.endswith("binary is not UTF-8 text")
    (tmp_path / "empty").write_text("\n")
    assert error(tmp_path, MARVELD_WEBHOOK_SECRET_FILE=str(tmp_path / "empty")).endswith("empty")


@pytest.mark.parametrize("name", [spec.name for spec in SECRETS if spec.required])
def test_a_missing_secret_stops_start_up(tmp_path: Path, name: str) -> None:
    path = tmp_path / "marveld.toml"
    path.write_text("")
    env = {k: v for k, v in SECRET_ENV.items() if k != name}
    with pytest.raises(ConfigError) as info:
        load_settings(path, env)
    assert str(info.value) == (
        f"{name} is not set: set it in the environment, or put the path of a file holding it in "
        f"{name}_FILE, or provide the systemd credential $CREDENTIALS_DIRECTORY/{name.lower()}"
    )
    assert "is set but empty" in error(tmp_path, **{name: ""})


def test_the_jwt_secret_must_be_long_enough(tmp_path: Path) -> None:
    short = "too-short-secret-31-bytes-long!"
    assert len(short) == 31
    message = error(tmp_path, MARVELD_JWT_SECRET=short)
    assert message.startswith("MARVELD_JWT_SECRET must be at least 32 bytes long")
    assert short not in message


def test_demo_fills_missing_secrets(tmp_path: Path) -> None:
    path = tmp_path / "marveld.toml"
    path.write_text("")
    one = load_settings(path, {}, demo=True).secrets
    two = load_settings(path, {"MARVEL_PUBLIC_KEY": PUBLIC}, demo=True).secrets
    assert len(one.jwt_secret.encode()) >= 32
    assert one.webhook_secret
    assert len({one.marvel_public_key, one.marvel_private_key, one.jwt_secret}) == 3
    assert one.jwt_secret != two.jwt_secret  # throwaway, new each time
    assert two.marvel_public_key == PUBLIC
    with pytest.raises(ConfigError, match="at least 32 bytes"):  # demo does not excuse bad ones
        load_settings(path, {"MARVELD_JWT_SECRET": "short"}, demo=True)


def test_secrets_never_show(tmp_path: Path) -> None:
    s = load(tmp_path, MARVELD_WEBHOOK_SECRET=WEBHOOK)
    for text in (repr(s), str(s), repr(s.secrets), str(s.secrets), f"{s}"):
        assert not any(value in text for value in ALL_SECRET_VALUES)
    assert repr(s.secrets) == (
        "Secrets(marvel_public_key=<set>, marvel_private_key=<set>, jwt_secret=<set>,"
        " webhook_secret=<set>, jwt_previous_secrets=<unset>, database_password=<unset>)"
    )
    assert repr(load(tmp_path).secrets).endswith(
        "webhook_secret=<unset>, jwt_previous_secrets=<unset>, database_password=<unset>)"
    )
    rotated = load(tmp_path, MARVELD_JWT_PREVIOUS_SECRETS=OLD_JWT)
    assert OLD_JWT not in repr(rotated)
    assert repr(rotated.secrets).endswith("jwt_previous_secrets=<set>, database_password=<unset>)")


OLD_JWT = "old-jwt-" + "0ld" * 10
OLDER_JWT = "older-jwt-" + "01d" * 10


def test_previous_jwt_secrets_from_every_source(tmp_path: Path) -> None:
    both = f"{OLD_JWT}, {OLDER_JWT}"
    assert load(tmp_path, MARVELD_JWT_PREVIOUS_SECRETS=both).secrets.jwt_previous_secrets == (
        OLD_JWT,
        OLDER_JWT,
    )
    (tmp_path / "previous").write_text(f"{OLD_JWT}\n{OLDER_JWT}\n")  # one a line works too
    from_file = load(tmp_path, MARVELD_JWT_PREVIOUS_SECRETS_FILE=str(tmp_path / "previous"))
    assert from_file.secrets.jwt_previous_secrets == (OLD_JWT, OLDER_JWT)
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "marveld_jwt_previous_secrets").write_text(OLD_JWT)
    from_systemd = load(tmp_path, CREDENTIALS_DIRECTORY=str(credentials))
    assert from_systemd.secrets.jwt_previous_secrets == (OLD_JWT,)
    assert load(tmp_path).secrets.jwt_previous_secrets == ()
    path = tmp_path / "marveld.toml"
    assert load_settings(path, {}, demo=True).secrets.jwt_previous_secrets == ()


def test_each_previous_jwt_secret_must_be_long_enough(tmp_path: Path) -> None:
    short = "short-but-secret"
    message = error(tmp_path, MARVELD_JWT_PREVIOUS_SECRETS=f"{OLD_JWT},{short}")
    assert message == (
        "MARVELD_JWT_PREVIOUS_SECRETS: value 2 of 2 must be at least 32 bytes long"
        " (values are separated by commas)"
    )
    assert short not in message
    assert "value 2 of 2" in error(tmp_path, MARVELD_JWT_PREVIOUS_SECRETS=f"{OLD_JWT},")


# --- the table, the dataclasses and the generated docs agree -----------------------------------


def test_the_table_matches_the_dataclasses() -> None:
    table = {(s.section, s.key) for s in SETTINGS}
    classes = {
        (section, f.name)
        for section, make in config._SECTIONS.items()
        for f in dataclasses.fields(make)  # type: ignore[arg-type]
    }
    assert table == classes
    assert [*config._SECTIONS, "secrets"] == [f.name for f in dataclasses.fields(Settings)]
    assert [spec.field for spec in SECRETS] == [f.name for f in dataclasses.fields(config.Secrets)]
    assert len({s.env for s in SETTINGS}) == len(SETTINGS)


def test_the_example_file_is_current() -> None:
    committed = (ROOT / "marveld.toml.example").read_text()
    assert committed == example_toml(), (
        "marveld.toml.example is stale: python -m marveld.config > marveld.toml.example"
    )


def test_the_example_file_documents_every_setting_and_holds_the_defaults(tmp_path: Path) -> None:
    text = example_toml()
    for s in SETTINGS:
        assert s.env in text
        assert s.help in text
    for spec in SECRETS:
        assert spec.name in text
    assert tomllib.loads(text) == {section: {} for section in config._SECTIONS}
    uncommented = re.sub(r"^# (\w+ = )", r"\1", text, flags=re.MULTILINE)
    path = tmp_path / "uncommented.toml"
    path.write_text(uncommented)
    defaults = tmp_path / "empty.toml"
    defaults.write_text("")
    assert load_settings(path, SECRET_ENV) == load_settings(defaults, SECRET_ENV)
    assert len(tomllib.loads(uncommented)["upstream"]) == 10


def test_the_markdown_reference() -> None:
    text = settings_reference_markdown()
    for s in SETTINGS:
        assert f"| `{s.name}` | `{s.env}` |" in text
    for spec in SECRETS:
        assert f"`{spec.name}`" in text
    row = "| `upstream.max_attempts` | `MARVELD_UPSTREAM_MAX_ATTEMPTS` | integer, 1 to 10 | `4` |"
    assert row in text
    rows = [line for line in text.splitlines() if line.startswith("|")]
    assert {line.count(" | ") for line in rows[: len(SETTINGS) + 2]} == {4}


def test_readme_settings_reference_is_current() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    begin = readme.index("-->", readme.index("<!-- settings:begin")) + len("-->\n")
    end = readme.index("<!-- settings:end -->")
    assert readme[begin:end].rstrip() == settings_reference_markdown().rstrip(), (
        "README.md's settings table is stale: paste settings_reference_markdown() output"
    )


def test_poller_reserve_must_leave_room_for_requests(tmp_path: Path) -> None:
    message = error(tmp_path, "[upstream]\ndaily_budget = 100\npoller_reserve = 100\n")
    assert "upstream.poller_reserve (100) must be less than upstream.daily_budget (100)" in message


def test_database_url_means_postgresql_and_takes_no_password(tmp_path: Path) -> None:
    assert load(tmp_path).database.url is None  # SQLite by default
    url = "postgresql://marveld@db.internal:5432/marveld?sslmode=verify-full"
    s = load(tmp_path, MARVELD_DATABASE_URL=url, MARVELD_DATABASE_PASSWORD="pg-s3cret")
    assert (s.database.url, s.database.pool_size) == (url, 8)
    assert s.secrets.database_password == "pg-s3cret"
    assert "pg-s3cret" not in repr(s)
    for bad in (
        "postgresql://marveld:pg-s3cret@db/marveld",
        "postgresql://db/marveld?password=pg-s3cret",
    ):
        with pytest.raises(ConfigError, match="MARVELD_DATABASE_PASSWORD") as caught:
            load(tmp_path, MARVELD_DATABASE_URL=bad)
        assert "pg-s3cret" not in str(caught.value)
    for bad in ("mysql://db/marveld", "postgresql://db:port/marveld"):
        with pytest.raises(ConfigError, match=r"database\.url"):
            load(tmp_path, MARVELD_DATABASE_URL=bad)


def test_database_url_may_name_a_primary_and_its_standbys(tmp_path: Path) -> None:
    # libpq's multi-host form: tried in order, the read-write one is the primary.
    url = "postgresql://marveld@pg-a:5432,pg-b:5433,[::1]/marveld?target_session_attrs=read-write"
    assert load(tmp_path, MARVELD_DATABASE_URL=url).database.url == url
    with pytest.raises(ConfigError, match=r"database\.url\): .*check the host and port 'pg-b:x'"):
        load(tmp_path, MARVELD_DATABASE_URL="postgresql://pg-a:5432,pg-b:x/marveld")
    with pytest.raises(ConfigError, match="MARVELD_DATABASE_PASSWORD") as caught:
        load(tmp_path, MARVELD_DATABASE_URL="postgresql://marveld:pg-s3cret@pg-a,pg-b/marveld")
    assert "pg-s3cret" not in str(caught.value)


def test_database_url_and_path_cannot_both_be_set(tmp_path: Path) -> None:
    url = "postgresql://marveld@db/marveld"
    with pytest.raises(ConfigError, match=r"database\.url and database\.path are both set"):
        load(tmp_path, MARVELD_DATABASE_URL=url, MARVELD_DATABASE_PATH=str(tmp_path / "m.db"))
    with pytest.raises(ConfigError, match="both set"):
        load(tmp_path, f'[database]\npath = "m.db"\nurl = "{url}"\n')
