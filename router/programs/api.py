"""``/v1/programs`` on the router: a tenant's programs, their release, and the classes loaded.

Only the tenant that created a program sees or releases it; anyone else gets the same 404
as for an id that never existed, so ids do not leak. Keyless deployments have one tenant
(``anonymous``): every client sees every program.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from shoal.router.auth import KeyStore
from shoal.router.errors import RouterError
from shoal.router.programs.gateway import ProgramGateway
from shoal.router.programs.scheduler import ProgramNotFound
from shoal.router.sandboxes.manager import sandbox_key
from shoal.router.tenancy import Tenancy


def _not_found(program_id: str) -> RouterError:
    return RouterError(404, f"program {program_id!r} not found", "invalid_request_error", "program_not_found")


def register_program_routes(app: FastAPI, gateway: ProgramGateway, keys: KeyStore, tenancy: Tenancy) -> None:
    """Add the programs API to ``app`` (``classes`` first: it is not a program id)."""

    def tenant_of(request: Request) -> str:
        headers = {k.lower(): v for k, v in request.headers.items()}
        return tenancy.tenant(keys.authenticate(headers), headers)

    async def list_classes(request: Request) -> Response:
        try:
            tenant_of(request)  # any tenant may read the classes; a bad key may not
        except RouterError as err:
            return err.response()
        scheduler = gateway.scheduler
        counts = scheduler.program_counts()
        now = scheduler.clock()
        data = []
        for cls in scheduler.classes.values():
            by_state = {state: 0 for state in ("active", "paused", "queued")}
            for (name, state, _activity), count in counts.items():
                if name == cls.name and state in by_state:
                    by_state[state] += count
            data.append({
                "name": cls.name, "model": cls.model, "priority": cls.priority,
                "max_concurrent_programs": cls.max_concurrent_programs, "lease_seconds": cls.lease_seconds,
                "tools": [t.name for t in cls.tools], **by_state,
                "steps_per_minute": scheduler.counters.steps_per_minute(cls.name, now),
            })
        source = gateway.classes
        return JSONResponse({
            "object": "list", "data": data, "error": source.error, "classes_file": gateway.cfg.classes_file,
            "loaded_at": source.loaded_at,
        })

    async def list_programs(request: Request) -> Response:
        try:
            views = gateway.scheduler.views(tenant_of(request))
        except RouterError as err:
            return err.response()
        return JSONResponse({"object": "list", "data": [_view_json(v) for v in views]})

    async def get_program(request: Request, program_id: str) -> Response:
        try:
            view = gateway.scheduler.view(program_id, tenant_of(request))
        except RouterError as err:
            return err.response()
        except ProgramNotFound:
            return _not_found(program_id).response()
        body = _view_json(view)
        if gateway.sandboxes is not None:
            body["sandbox"] = await gateway.sandboxes.ledger(sandbox_key(view.tenant, program_id))
        return JSONResponse(body)

    async def release_program(request: Request, program_id: str) -> Response:
        try:
            gateway.release(program_id, tenant_of(request))
        except RouterError as err:
            return err.response()
        except ProgramNotFound:
            return _not_found(program_id).response()
        return JSONResponse({"id": program_id, "object": "program", "released": True})

    app.add_api_route("/v1/programs/classes", list_classes, methods=["GET"])
    app.add_api_route("/v1/programs", list_programs, methods=["GET"])
    app.add_api_route("/v1/programs/{program_id:path}/release", release_program, methods=["POST"])
    app.add_api_route("/v1/programs/{program_id:path}", get_program, methods=["GET"])


def _view_json(view: Any) -> dict[str, Any]:
    body = dataclasses.asdict(view)
    body.pop("tenant", None)
    return {"id": body.pop("program_id"), "object": "program", **body}
