"""marvel.v1.AdminService: operations for users with the admin role."""

from __future__ import annotations

import logging

from marveld.domain.errors import PermissionDenied
from marveld.domain.users import User
from marveld.grpc.bridge import CallContext, Service, unary
from marveld.proto.marvel import v1 as pb
from marveld.services.sync import SyncService
from marveld.services.users import UserService

log = logging.getLogger(__name__)

PACKAGE = "marvel.v1"


def _require_admin(user: User, method: str) -> None:
    if user.role != "admin":
        raise PermissionDenied(f"{method} needs the admin role")


def admin_service(users: UserService, sync: SyncService) -> Service:
    async def trigger_sync(
        request: pb.TriggerSyncRequest, ctx: CallContext
    ) -> pb.TriggerSyncResponse:
        user = await users.authenticate(ctx.authorization)
        _require_admin(user, "TriggerSync")
        log.info("TriggerSync by user %s", user.id)
        report = await sync.run_once()
        return pb.TriggerSyncResponse(
            kind=report.kind,
            pages_fetched=report.pages,
            added=report.added,
            updated=report.updated,
            upstream_calls=report.calls,
            not_modified=report.not_modified,
            run_id=report.run_id,
        )

    return Service(
        f"{PACKAGE}.AdminService",
        {"TriggerSync": unary(trigger_sync, pb.TriggerSyncRequest, pb.TriggerSyncResponse)},
    )
