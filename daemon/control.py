"""The control API: HTTP+JSON on a Unix socket, served in the daemon's trio loop.

FastAPI (on anyio, hence trio) describes the routes and publishes the OpenAPI
document at /openapi.json; hypercorn's trio worker serves them.  Handlers are
thin: one core call each.  A DmsfsError becomes
``{"error": {"code": ..., "message": ...}}`` with its HTTP status, here only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import trio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from dmsfs import __version__
from dmsfs.errors import DmsfsError
from dmsfs.repo import Repo

log = logging.getLogger(__name__)


def build_app(repo: Repo) -> FastAPI:
    """The ASGI application for one repository."""
    app = FastAPI(title="dmsfs control API", version=__version__,
                  description="What dmsctl and the dmsfs.client SDK speak to the daemon.")

    @app.exception_handler(DmsfsError)
    async def dmsfs_error(request: Request, exc: DmsfsError) -> JSONResponse:
        return JSONResponse(status_code=exc.status,
                            content={"error": {"code": exc.code, "message": exc.message}})

    @app.get("/v1/stats", summary="Store statistics: sizes, dedup ratio, backlog, cache")
    async def stats() -> dict[str, Any]:
        return repo.stats()

    @app.post("/v1/fsck", summary="Verify index against store; read_data checks every chunk")
    async def fsck(read_data: bool = False) -> dict[str, Any]:
        return await repo.fsck(read_data)

    @app.post("/v1/reindex", summary="Rebuild the chunk index from the packs in the store")
    async def reindex() -> dict[str, int]:
        return await repo.reindex()

    @app.post("/v1/flush", summary="Seal everything staged into packs in the store")
    async def flush() -> dict[str, Any]:
        await repo.chunks.flush()
        return {"backlog": repo.chunks.backlog}

    return app


async def serve(app: FastAPI, socket_path: Path, *,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the API on a Unix socket until cancelled."""
    config = HypercornConfig()
    config.bind = [f"unix:{socket_path}"]
    config.accesslog = None
    config.errorlog = log  # type: ignore[assignment]
    config.unix_permissions = 0o666  # access control is per request (peer uid), not by mode
    await hypercorn_serve(app, config, shutdown_trigger=trio.sleep_forever,  # type: ignore[arg-type]
                          task_status=task_status)
