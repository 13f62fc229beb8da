"""marvel.v1.AdminService: operations for users with the admin role."""

from __future__ import annotations

import logging

from marveld.domain.errors import InvalidArgument
from marveld.grpc.bridge import CallContext, Service, unary
from marveld.proto.marvel import v1 as pb
from marveld.services.characters import CharacterService
from marveld.services.sync import SyncService
from marveld.services.users import UserService

log = logging.getLogger(__name__)

PACKAGE = "marvel.v1"


def admin_service(users: UserService, characters: CharacterService, sync: SyncService) -> Service:
    async def admin(ctx: CallContext, method: str) -> None:
        user = users.require_admin(await users.authenticate(ctx.authorization, fresh=True))
        log.info("%s by user %s", method, user.id)

    async def trigger_sync(
        request: pb.TriggerSyncRequest, ctx: CallContext
    ) -> pb.TriggerSyncResponse:
        await admin(ctx, "TriggerSync")
        report = await sync.run_once()
        return pb.TriggerSyncResponse(
            kind=report.kind,
            pages_fetched=report.pages,
            added=report.added,
            updated=report.updated,
            upstream_calls=report.calls,
            not_modified=report.not_modified,
            run_id=report.run_id,
            waited_for_another=report.waited,
        )

    async def purge_cache(request: pb.PurgeCacheRequest, ctx: CallContext) -> pb.PurgeCacheResponse:
        await admin(ctx, "PurgeCache")
        if request.character_id is not None and request.character_id <= 0:
            raise InvalidArgument("character_id", "must be a positive Marvel character id")
        removed = await characters.purge(
            key=request.key or "",
            marvel_id=request.character_id or 0,
            everything=bool(request.all),
        )
        return pb.PurgeCacheResponse(removed=removed)

    return Service(
        f"{PACKAGE}.AdminService",
        {
            "TriggerSync": unary(trigger_sync, pb.TriggerSyncRequest, pb.TriggerSyncResponse),
            "PurgeCache": unary(purge_cache, pb.PurgeCacheRequest, pb.PurgeCacheResponse),
        },
    )
