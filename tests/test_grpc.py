"""The gRPC contract end to end: a real grpclib client, the daemon, the simulator, SQLite."""

from __future__ import annotations

import httpx
import pytest
import trio
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from grpclib.health.v1.health_grpc import HealthStub
from grpclib.health.v1.health_pb2 import HealthCheckRequest, HealthCheckResponse

from marveld.proto.marvel import v1 as pb
from tests.aio import grpc_client
from tests.calls import PASSWORD, TIMEOUT, list_characters, register_and_login, status_of
from tests.conftest import Running, make_settings, start_daemon

pytestmark = pytest.mark.both_backends  # the service tests run on SQLite and PostgreSQL


async def test_register_login_profile(marveld: Running) -> None:
    auth = await register_and_login(marveld, "Peter@Example.com ")

    async def profile(channel: Channel) -> pb.UserProfile:
        return await pb.UserServiceStub(channel).get_my_profile(
            pb.GetMyProfileRequest(), metadata=auth, timeout=TIMEOUT
        )

    me = await marveld.client.call(profile)
    assert me.email == "peter@example.com"
    assert me.name == "Peter"
    assert me.id
    assert me.created_at is not None


async def test_login_reply_is_a_bearer_token_with_expiry(marveld: Running) -> None:
    async def go(channel: Channel) -> pb.LoginResponse:
        auth = pb.AuthServiceStub(channel)
        await auth.register(
            pb.RegisterRequest(name="Mary", email="mj@example.com", password=PASSWORD),
            timeout=TIMEOUT,
        )
        return await auth.login(
            pb.LoginRequest(email="MJ@example.com", password=PASSWORD), timeout=TIMEOUT
        )

    reply = await marveld.client.call(go)
    assert reply.token_type == "Bearer"
    assert reply.access_token.count(".") == 2
    assert reply.expires_at is not None


async def test_duplicate_email_is_already_exists(marveld: Running) -> None:
    await register_and_login(marveld, "twice@example.com")

    async def again(channel: Channel) -> object:
        return await pb.AuthServiceStub(channel).register(
            pb.RegisterRequest(name="Again", email="TWICE@example.com", password=PASSWORD),
            timeout=TIMEOUT,
        )

    error = await status_of(marveld, again)
    assert error.status is Status.ALREADY_EXISTS


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.RegisterRequest(name="", email="a@example.com", password=PASSWORD), "name"),
        (pb.RegisterRequest(name="A", email="not-an-email", password=PASSWORD), "email"),
        (pb.RegisterRequest(name="A", email="a@example.com", password="short"), "password"),
        (pb.RegisterRequest(name="A", email="a@example.com", password="Password123"), "password"),
        (pb.RegisterRequest(name="\u202eA", email="a@example.com", password=PASSWORD), "name"),
    ],
)
async def test_register_names_the_bad_field(
    marveld: Running, request_: pb.RegisterRequest, field: str
) -> None:
    async def go(channel: Channel) -> object:
        return await pb.AuthServiceStub(channel).register(request_, timeout=TIMEOUT)

    error = await status_of(marveld, go)
    assert error.status is Status.INVALID_ARGUMENT
    assert field in (error.message or "")


async def test_wrong_password_and_unknown_email_get_the_same_answer(marveld: Running) -> None:
    await register_and_login(marveld, "tony@example.com")

    def login(email: str, password: str) -> object:
        async def go(channel: Channel) -> object:
            return await pb.AuthServiceStub(channel).login(
                pb.LoginRequest(email=email, password=password), timeout=TIMEOUT
            )

        return go

    wrong_password = await status_of(marveld, login("tony@example.com", "not the password"))
    unknown_email = await status_of(marveld, login("nobody@example.com", PASSWORD))
    assert wrong_password.status is unknown_email.status is Status.UNAUTHENTICATED
    assert wrong_password.message == unknown_email.message


async def test_character_calls_need_a_valid_token(marveld: Running) -> None:
    def list_with(metadata: dict[str, str] | None) -> object:
        async def go(channel: Channel) -> object:
            return await pb.CharacterServiceStub(channel).list_characters(
                pb.ListCharactersRequest(), metadata=metadata, timeout=TIMEOUT
            )

        return go

    for metadata in (None, {"authorization": "Bearer not-a-jwt"}, {"authorization": "Basic x"}):
        error = await status_of(marveld, list_with(metadata))
        assert error.status is Status.UNAUTHENTICATED
    assert marveld.sim.state.requests == 0


async def test_list_get_and_second_list_is_a_cache_hit(marveld: Running) -> None:
    auth = await register_and_login(marveld)

    async def list_spiders(channel: Channel) -> pb.CharacterPage:
        return await pb.CharacterServiceStub(channel).list_characters(
            pb.ListCharactersRequest(name_starts_with="Spider"), metadata=auth, timeout=TIMEOUT
        )

    first = await marveld.client.call(list_spiders)
    assert first.cache_status is pb.CacheStatus.MISS
    assert first.count == len(first.characters) > 0
    assert all(c.name.startswith("Spider") for c in first.characters)
    assert first.attribution_text.startswith("Data provided by Marvel.")
    calls_after_first = marveld.sim.state.requests

    second = await marveld.client.call(list_spiders)
    assert second.cache_status is pb.CacheStatus.HIT
    assert [c.id for c in second.characters] == [c.id for c in first.characters]
    assert marveld.sim.state.requests == calls_after_first

    async def get_spider_man(channel: Channel) -> pb.Character:
        return await pb.CharacterServiceStub(channel).get_character(
            pb.GetCharacterRequest(id=1009610), metadata=auth, timeout=TIMEOUT
        )

    spider_man = await marveld.client.call(get_spider_man)
    assert spider_man.name == "Spider-Man (Peter Parker)"
    assert spider_man.image_url.startswith("http://i.annihil.us/")
    assert spider_man.comics_available > 0

    async with httpx.AsyncClient() as http:
        metrics = (await http.get(f"{marveld.http}/metrics")).text
    assert 'marveld_cache_requests_total{result="hit",tier="memory"} 1.0' in metrics
    assert f'marveld_cache_requests_total{{result="miss",tier="{marveld.tier}"}} 2.0' in metrics
    assert 'marveld_upstream_requests_total{outcome="ok"} 2.0' in metrics


async def test_search_finds_by_name_prefix(marveld: Running) -> None:
    auth = await register_and_login(marveld)

    async def search(channel: Channel) -> pb.CharacterPage:
        return await pb.CharacterServiceStub(channel).search_characters(
            pb.SearchCharactersRequest(query="  spider ", limit=5), metadata=auth, timeout=TIMEOUT
        )

    page = await marveld.client.call(search)
    assert page.limit == 5
    assert 0 < len(page.characters) <= 5
    assert all(c.name.lower().startswith("spider") for c in page.characters)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ListCharactersRequest(limit=101), "limit"),
        (pb.ListCharactersRequest(limit=0), "limit"),
        (pb.ListCharactersRequest(offset=-1), "offset"),
        (pb.ListCharactersRequest(order_by="goofiness"), "order_by"),
        (pb.ListCharactersRequest(modified_since="yesterday"), "modified_since"),
        (pb.ListCharactersRequest(name="   "), "name"),
        (pb.ListCharactersRequest(name_starts_with="x" * 300), "name_starts_with"),
        (pb.ListCharactersRequest(name="x" * 100_000), "name"),
        (pb.ListCharactersRequest(name="Spider\x00Man"), "name"),
        (pb.ListCharactersRequest(modified_since="0001-01-01T00:00:00+01:00"), "modified_since"),
    ],
)
async def test_bad_list_arguments_name_the_field(
    marveld: Running, request_: pb.ListCharactersRequest, field: str
) -> None:
    auth = await register_and_login(marveld)

    async def go(channel: Channel) -> object:
        return await pb.CharacterServiceStub(channel).list_characters(
            request_, metadata=auth, timeout=TIMEOUT
        )

    error = await status_of(marveld, go)
    assert error.status is Status.INVALID_ARGUMENT
    assert (error.message or "").startswith(f"{field}:")
    assert marveld.sim.state.requests == 0


async def test_empty_search_and_bad_id_are_invalid_argument(marveld: Running) -> None:
    auth = await register_and_login(marveld)

    async def empty_search(channel: Channel) -> object:
        return await pb.CharacterServiceStub(channel).search_characters(
            pb.SearchCharactersRequest(query=" "), metadata=auth, timeout=TIMEOUT
        )

    async def zero_id(channel: Channel) -> object:
        return await pb.CharacterServiceStub(channel).get_character(
            pb.GetCharacterRequest(id=0), metadata=auth, timeout=TIMEOUT
        )

    for call, field in ((empty_search, "query"), (zero_id, "id")):
        error = await status_of(marveld, call)
        assert error.status is Status.INVALID_ARGUMENT
        assert (error.message or "").startswith(f"{field}:")


async def test_unknown_character_is_not_found(marveld: Running) -> None:
    auth = await register_and_login(marveld)

    async def go(channel: Channel) -> object:
        return await pb.CharacterServiceStub(channel).get_character(
            pb.GetCharacterRequest(id=1), metadata=auth, timeout=TIMEOUT
        )

    error = await status_of(marveld, go)
    assert error.status is Status.NOT_FOUND


async def test_health_check_serves(marveld: Running) -> None:
    async def go(channel: Channel) -> HealthCheckResponse:
        reply = await HealthStub(channel).Check(HealthCheckRequest(), timeout=TIMEOUT)
        assert reply is not None
        return reply

    reply = await marveld.client.call(go)
    assert reply.status == HealthCheckResponse.SERVING


async def test_upstream_down_with_nothing_cached_is_unavailable(
    nursery: trio.Nursery, tmp_path: object
) -> None:
    # A port held bound but not listening for the whole test: connections to it are
    # refused, and nothing else can take it (the daemon's own ports, bound to port 0, had
    # once been given this port after the probe closed it: the "upstream" answered 404).
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
        settings = make_settings(tmp_path, f"http://127.0.0.1:{dead_port}/v1/public")  # type: ignore[arg-type]
        endpoints = await start_daemon(nursery, settings)
        async with grpc_client(endpoints.grpc_port) as client:

            async def go(channel: Channel) -> object:
                auth = pb.AuthServiceStub(channel)
                await auth.register(
                    pb.RegisterRequest(name="X", email="x@example.com", password=PASSWORD),
                    timeout=TIMEOUT,
                )
                token = await auth.login(
                    pb.LoginRequest(email="x@example.com", password=PASSWORD), timeout=TIMEOUT
                )
                return await pb.CharacterServiceStub(channel).list_characters(
                    pb.ListCharactersRequest(),
                    metadata={"authorization": f"Bearer {token.access_token}"},
                    timeout=TIMEOUT,
                )

            with pytest.raises(GRPCError) as info:
                await client.call(go)
            assert info.value.status is Status.UNAVAILABLE


async def test_wrong_marvel_keys_are_unavailable_not_the_clients_fault(
    nursery: trio.Nursery, sim: object, tmp_path: object
) -> None:
    settings = make_settings(
        tmp_path,  # type: ignore[arg-type]
        sim.url,  # type: ignore[attr-defined]
        MARVEL_PRIVATE_KEY="not-the-simulators-key",
    )
    endpoints = await start_daemon(nursery, settings)
    async with grpc_client(endpoints.grpc_port) as client:
        running = Running(settings, endpoints, sim, client)  # type: ignore[arg-type]
        auth = await register_and_login(running)

        async def go(channel: Channel) -> object:
            return await pb.CharacterServiceStub(channel).list_characters(
                pb.ListCharactersRequest(), metadata=auth, timeout=TIMEOUT
            )

        error = await status_of(running, go)
    assert error.status is Status.UNAVAILABLE
    assert "credentials" in (error.message or "")
    assert "not-the-simulators-key" not in (error.message or "")


async def test_a_slow_upstream_ends_at_the_clients_deadline(marveld: Running) -> None:
    auth = await register_and_login(marveld)
    marveld.sim.state.latency_ms = 3000

    async def go(channel: Channel) -> object:
        return await pb.CharacterServiceStub(channel).list_characters(
            pb.ListCharactersRequest(), metadata=auth, timeout=0.5
        )

    # grpclib's client reports its own deadline as a TimeoutError ("Deadline exceeded").
    with pytest.raises(TimeoutError, match="Deadline exceeded"):
        await marveld.client.call(go)
    marveld.sim.state.latency_ms = 0
    page = await list_characters(marveld, auth)
    assert page.cache_status is pb.CacheStatus.MISS
