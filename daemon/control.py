"""The control API: HTTP+JSON on a Unix socket, served in the daemon's trio loop.

FastAPI (on anyio, hence trio) describes the routes and publishes the OpenAPI
document at /openapi.json; hypercorn's trio connection handler serves them.
Handlers are thin: one core call each.  Errors become ``{"error": {"code": ...,
"message": ...}}`` here only: a DmsfsError with its own status and code, a
malformed request 400 "usage", anything unexpected 500 "internal" (and a logged
traceback).

The caller of each request is the process at the other end of its connection,
from the socket's peer credentials (SO_PEERCRED), read once per connection.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper, ConnectionState
from hypercorn.utils import wrap_app
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dmsfs import __version__
from dmsfs.errors import DmsfsError, PermissionDenied, UsageError
from dmsfs.export import tar_stream
from dmsfs.repo import Repo
from dmsfs.vfs import Vfs

log = logging.getLogger(__name__)

PEER_EXTENSION = "dmsfs.peer"   # where a request's Caller sits in the ASGI scope's extensions
UCRED = struct.Struct("iII")    # struct ucred: pid, uid, gid
VERSION_SPEC = "v<N>, latest, a tag, a version id or a unique prefix of one (8+ characters)"


# ------------------------------------------------------------------ the caller
@dataclass(frozen=True)
class Caller:
    """The process that sent a request."""

    uid: int
    gid: int
    pid: int


def caller(request: Request) -> Caller:
    """Who sent this request, from the peer credentials of its connection."""
    try:
        return request.scope["extensions"][PEER_EXTENSION]
    except KeyError:
        raise PermissionDenied("the caller is unknown: no peer credentials on this "
                               "connection") from None


def _peer(sock: trio.socket.SocketType) -> Caller:
    pid, uid, gid = UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                 UCRED.size))
    return Caller(uid=uid, gid=gid, pid=pid)


class _PeerServer(TCPServer):
    """hypercorn's connection handler, adding the peer's credentials to the scope of
    every request on the connection (the kernel fixed them at connect time)."""

    def __init__(self, app: AppWrapper, config: HypercornConfig, context: WorkerContext,
                 state: ConnectionState, stream: trio.SocketStream) -> None:
        peer = _peer(stream.socket)

        async def app_with_peer(scope: Scope, *args: Any) -> None:
            scope["extensions"][PEER_EXTENSION] = peer
            await app(scope, *args)  # type: ignore[arg-type]

        super().__init__(app_with_peer, config, context, state, stream)  # type: ignore[arg-type]


# ------------------------------------------------------------------ errors
def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"code": code, "message": message}})


class _InternalErrors:
    """ASGI middleware: an unexpected exception is logged once with its request and
    becomes a 500 "internal" error, or, if the response had started (an export
    stream), cuts the response off so the client sees it incomplete."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            log.exception("internal error in %s %s", scope.get("method"), scope.get("path"))
            if not started:
                response = _error(500, "internal", f"internal error ({type(exc).__name__}: "
                                  f"{exc}); the daemon's log has the details")
                await response(scope, receive, send)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DmsfsError)
    async def dmsfs_error(request: Request, exc: DmsfsError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return _error(400, UsageError.code, f"invalid request: {problems}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        # unknown routes and methods: the daemon may be older than the client
        code = "not_found" if exc.status_code == 404 else UsageError.code
        return _error(exc.status_code, code,
                      f"{request.method} {request.url.path}: {exc.detail}")

    app.add_middleware(_InternalErrors)


# ------------------------------------------------------------------ documents
class ErrorDetail(BaseModel):
    code: str = Field(description="usage, not_found, invalid, exists, permission_denied, "
                      "internal, ... (dmsfs.errors)")
    message: str = Field(description="one line for people")


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"model": ErrorResponse, "description": "The request cannot be done: "
            "`usage` for a malformed one, else why"},
    "5XX": {"model": ErrorResponse, "description": "The daemon or its store failed"},
}


class SnapshotRequest(BaseModel):
    message: str = Field(default="", description="what this version is, shown by `dmsctl versions`")
    tag: str | None = Field(default=None, description="a tag to give the new version")


class TagRequest(BaseModel):
    version: str = Field(description=VERSION_SPEC)


class RestoreRequest(BaseModel):
    version: str = Field(description=VERSION_SPEC)
    path: str | None = Field(default=None, description="one file or directory, relative to the "
                             "dataset root (default: the whole dataset)")


class SchemaRequest(BaseModel):
    schema_: Any = Field(alias="schema", description="a JSON Schema (draft 2020-12) for one "
                         "record")
    globs: list[str] | None = Field(default=None, description="file name patterns it applies "
                                    "to (default *.jsonl, *.ndjson, *.csv, *.parquet, *.json)")


class DatasetRequest(BaseModel):
    name: str = Field(description="the dataset's name: [A-Za-z0-9][A-Za-z0-9._-]{0,127}")
    schema_: Any = Field(default=None, alias="schema", description="a JSON Schema to set at once")
    globs: list[str] | None = Field(default=None, description="as for the schema")


def version_ref(text: str) -> tuple[str, str | None]:
    """"ds@ver" -> (ds, ver); "ds" -> (ds, None), the live tree."""
    dataset, at, spec = text.partition("@")
    if not dataset or (at and not spec):
        raise UsageError(f"{text!r} is not DATASET or DATASET@VERSION")
    return dataset, spec if at else None


# ------------------------------------------------------------------ the application
def build_app(repo: Repo, vfs: Vfs) -> FastAPI:
    """The ASGI application for one repository and its file system."""
    app = FastAPI(title="dmsfs control API", version=__version__,
                  description="What dmsctl and the dmsfs.client SDK speak to the daemon. "
                  "The caller is the process at the other end of the Unix socket.",
                  responses=ERROR_RESPONSES)
    _install_error_handlers(app)
    _store_routes(app, repo)
    _version_routes(app, repo, vfs)
    _schema_routes(app, repo, vfs)
    _document_usage_errors(app)
    return app


def _document_usage_errors(app: FastAPI) -> None:
    """Drop the 422 responses FastAPI documents for every route with parameters:
    invalid requests are 400 "usage" errors here (ERROR_RESPONSES has them)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        doc = generate()
        for route in doc["paths"].values():
            for operation in route.values():
                operation["responses"].pop("422", None)
        return doc

    app.openapi = openapi  # type: ignore[method-assign]


def _store_routes(app: FastAPI, repo: Repo) -> None:
    @app.get("/v1/whoami", summary="The caller as the daemon sees it",
             description="uid, gid and pid of the calling process, from the Unix socket's "
             "peer credentials: what the daemon's access checks use.")
    async def whoami(request: Request) -> dict[str, int]:
        return asdict(caller(request))

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
        return {"backlog": repo.backlog()}


def _version_routes(app: FastAPI, repo: Repo, vfs: Vfs) -> None:
    versions = repo.versions

    @app.post("/v1/datasets/{ds}/snapshots", status_code=201,
              summary="Snapshot a dataset's live tree as its next version",
              description="Costs metadata only.  Returns the new version record.")
    async def snapshot(ds: str, request: Request,
                       body: SnapshotRequest | None = None) -> dict[str, Any]:
        body = body or SnapshotRequest()
        record = await versions.snapshot(ds, message=body.message, tag=body.tag,
                                         uid=caller(request).uid)
        return record.to_json()

    @app.get("/v1/datasets/{ds}/versions", summary="Every version of a dataset, newest first",
             description="Records: number, id, dataset, time, uid, user, message, tags, "
             "files, bytes.")
    async def list_versions(ds: str) -> dict[str, Any]:
        return {"versions": [r.to_json() for r in versions.list(ds)]}

    @app.put("/v1/datasets/{ds}/tags/{tag}", summary="Point a tag at a version",
             description="Creates the tag or moves it.  Returns the tagged version's record.")
    async def set_tag(ds: str, tag: str, body: TagRequest, request: Request) -> dict[str, Any]:
        record = await versions.tag(ds, body.version, tag, uid=caller(request).uid)
        return record.to_json()

    @app.delete("/v1/datasets/{ds}/tags/{tag}", status_code=204, summary="Remove a tag",
                description="The version it named stays.")
    async def untag(ds: str, tag: str, request: Request) -> None:
        await versions.untag(ds, tag, uid=caller(request).uid)

    @app.get("/v1/diff", summary="Files added, removed, modified and renamed between two "
             "versions", description="Paths are relative to the dataset root, sorted.")
    async def diff(a: str = Query(description="DATASET@VERSION, or DATASET for its live tree"),
                   b: str = Query(description="DATASET@VERSION, or DATASET for its live tree"),
                   schema: bool = Query(False, description="also the change of the schemas "
                                        "the two sides were validated against"),
                   rows: bool = Query(False, description="also added, removed and changed "
                                      "rows of the tabular files (CSV, JSONL, JSON, Parquet)"),
                   key: str | None = Query(None, description="COL[,COL]: match rows by these "
                                           "columns (default: whole-row content)"),
                   limit: int = Query(20, ge=0, description="rows listed per file and kind"),
                   ) -> dict[str, Any]:
        return await versions.diff(version_ref(a), version_ref(b), schema=schema, rows=rows,
                                   key=key.split(",") if key else None, limit=limit)

    @app.get("/v1/datasets/{ds}/versions/{spec}/export", response_class=StreamingResponse,
             summary="A version as a tar stream (pax format)",
             description="Paths relative to the dataset root; header X-Dmsfs-Bytes is the "
             "version's total file bytes, for progress.",
             responses={200: {"content": {"application/x-tar": {}}}})
    async def export_version(ds: str, spec: str) -> StreamingResponse:
        record = versions.resolve(ds, spec)  # before the stream starts: errors stay JSON
        return StreamingResponse(
            tar_stream(versions, repo.chunks, record), media_type="application/x-tar",
            headers={"X-Dmsfs-Bytes": str(record.bytes), "Content-Disposition":
                     f'attachment; filename="{ds}@v{record.number}.tar"'})

    @app.post("/v1/datasets/{ds}/restore", summary="Bring the live tree (or one path) back to "
              "a version", description="A new live state; every version is kept.  Returns "
              "counts of what changed.")
    async def restore(ds: str, body: RestoreRequest, request: Request) -> dict[str, Any]:
        return await vfs.restore(ds, body.version, body.path, uid=caller(request).uid)


def _schema_routes(app: FastAPI, repo: Repo, vfs: Vfs) -> None:
    schemas = repo.schemas

    @app.post("/v1/datasets", status_code=201, summary="Create a dataset, with a schema",
              description="The same as mkdir at the mount's top level, plus the schema.")
    async def create_dataset(body: DatasetRequest, request: Request) -> dict[str, Any]:
        who = caller(request)
        if body.schema_ is not None:
            schemas.check(body.schema_, body.globs)  # refuse before anything is made
        await vfs.create_dataset(body.name, who.uid, who.gid)
        if body.schema_ is None:
            return {"dataset": body.name, "schema": None}
        version = await schemas.set(body.name, body.schema_, body.globs, uid=who.uid)
        return {"dataset": body.name, "schema": version.to_json()}

    @app.put("/v1/datasets/{ds}/schema", status_code=201,
             summary="Register a new version of a dataset's schema",
             description="Refused with the validator's message if the schema is invalid.  "
             "Files matching the globs are validated at every close from now on.")
    async def set_schema(ds: str, body: SchemaRequest, request: Request) -> dict[str, Any]:
        repo.versions.dataset_ino(ds)
        return (await schemas.set(ds, body.schema_, body.globs,
                                  uid=caller(request).uid)).to_json()

    @app.get("/v1/datasets/{ds}/schema", summary="A version of a dataset's schema",
             description="The current one unless `version` is given.")
    async def show_schema(ds: str, version: int | None = None) -> dict[str, Any]:
        return schemas.get(ds, version).to_json()

    @app.get("/v1/datasets/{ds}/schemas", summary="Every version of a dataset's schema",
             description="Oldest first.")
    async def schema_history(ds: str) -> dict[str, Any]:
        repo.versions.dataset_ino(ds)
        return {"schemas": [s.to_json() for s in schemas.history(ds)]}

    @app.get("/v1/datasets/{ds}/rejects", summary="Recent writes refused by the schema",
             description="Newest first: path, time, uid, user, schema version, the first "
             "failing record (1-based; line for JSONL, data row for CSV), the JSON pointer "
             "of the failing value, the validator's message, how many records failed.")
    async def rejects(ds: str) -> dict[str, Any]:
        repo.versions.dataset_ino(ds)
        return {"rejects": schemas.rejects(ds)}


# ------------------------------------------------------------------ serving
async def serve(app: FastAPI, socket_path: Path, *,
                task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
                ) -> None:
    """Serve the API on a Unix socket until cancelled.

    This is hypercorn's trio worker_serve cut down to one Unix socket, because
    that hard-wires its connection class and _PeerServer must replace it.  No
    lifespan events: the app has no start-up or shutdown work.
    """
    config = HypercornConfig()
    config.bind = [f"unix:{socket_path}"]
    config.accesslog = None
    config.errorlog = log
    (sock,) = config.create_sockets().insecure_sockets
    os.chmod(socket_path, 0o666)  # access control is per request (peer uid), not by mode
    sock.listen(config.backlog)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    asgi = wrap_app(app, config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
    connection = partial(_PeerServer, asgi, config, WorkerContext(None), ConnectionState({}))
    await trio.serve_listeners(connection, [listener], task_status=task_status)
