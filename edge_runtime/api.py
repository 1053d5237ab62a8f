"""The HTTP API the POS and the monitoring call (FastAPI, served by uvicorn in a thread).

Loopback by default; binding anything else needs a bearer token. Answers carry ages and
decisions only. Imported only when the daemon starts (FastAPI is not a light import)."""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from agetool import __version__
from agetool.edge_runtime.config import is_loopback
from agetool.edge_runtime.decide import Decision
from agetool.edge_runtime.http_limits import (
    ConnectionGuard, HttpLimits, connection_budget, guarded_protocol_class, limit_repeats, listening_socket,
    raise_nofile_limit,
)
from agetool.edge_runtime import openapi_doc
from agetool.edge_runtime.receipts import InvalidReceipt, ReceiptConflict, StoreUnavailable, parse_receipt
from agetool.errors import AgetoolError

if TYPE_CHECKING:
    from agetool.edge_runtime.daemon import Daemon

log = logging.getLogger(__name__)

API_TITLE = "agetool register daemon"
# Only the receipts route takes a body (api.max_body_bytes, default 256 KiB); a bigger one is a
# mistake or an attack, refused before it is read.
MAX_BODY_BYTES = 64 * 1024


class BodyLimit:
    """ASGI middleware: 413 for a Content-Length over max_bytes, 411 for a chunked body."""

    def __init__(self, app: Any, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        headers = dict(scope.get("headers") or ()) if scope["type"] == "http" else {}
        length = headers.get(b"content-length", b"0")
        status = 413 if not length.isdigit() or int(length) > self.max_bytes else 0
        status = status or (411 if b"transfer-encoding" in headers else 0)
        if not status:
            return await self.app(scope, receive, send)
        detail = {"detail": f"request body over {self.max_bytes} bytes" if status == 413 else "chunked body refused"}
        await JSONResponse(detail, status_code=status, headers={"Connection": "close"})(scope, receive, send)


def create_app(daemon: "Daemon", bearer_token: str | None = None) -> "FastAPI":
    """The FastAPI app over a started Daemon. With a token, every route but /healthz needs it."""
    from agetool.edge_runtime.daemon import UnknownLane

    token = bearer_token if bearer_token is not None else daemon.config.api.bearer_token

    def require_token(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(status_code=401, detail="bearer token required",
                                headers={"WWW-Authenticate": "Bearer"})

    guarded = [Depends(require_token)]
    # No /docs or /redoc: they pull JavaScript from a CDN a till PC cannot (and should not) reach.
    app = FastAPI(title=API_TITLE, version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json")
    app.add_middleware(BodyLimit, max_bytes=daemon.config.api.max_body_bytes)

    @app.exception_handler(InvalidReceipt)
    async def _invalid_receipt(_request: Request, exc: InvalidReceipt) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.exception_handler(ReceiptConflict)
    async def _receipt_conflict(_request: Request, exc: ReceiptConflict) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc), "stored": exc.stored.to_api()})

    @app.exception_handler(StoreUnavailable)
    async def _store_unavailable(_request: Request, exc: StoreUnavailable) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": f"receipt not stored, retry: {exc}"},
                            headers={"Retry-After": "1"})

    @app.exception_handler(ClientDisconnect)
    async def _client_left(request: Request, _exc: ClientDisconnect) -> Response:
        # Not our error: one line, no traceback (and nobody to answer).
        log.info("api: client left %s %s before sending the whole body", request.method, request.url.path)
        return Response(status_code=400)

    @app.exception_handler(UnknownLane)
    async def _unknown_lane(_request: Request, exc: UnknownLane) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": f"unknown lane {exc.args[0]!r}",
                                                      "lanes": list(daemon.lanes)})

    @app.get("/healthz", summary="The process is up.")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "uptime_s": round(time.time() - daemon.started_wall_s, 1)}

    @app.get("/readyz", summary="Model loaded and every lane's source giving frames (503 otherwise).",
             dependencies=guarded)
    def readyz() -> JSONResponse:
        ready, details = daemon.readiness()
        return JSONResponse(status_code=200 if ready else 503, content=details)

    @app.get("/metrics", summary="Prometheus metrics.", dependencies=guarded)
    def metrics() -> Response:
        body, content_type = daemon.metrics.exposition()
        return Response(content=body, media_type=content_type)

    @app.get("/v1/lanes", summary="Every lane's capture status.", dependencies=guarded)
    def lanes() -> list[dict[str, Any]]:
        return [daemon.lane_status(name) for name in daemon.lanes]

    @app.get("/v1/lanes/{lane}", summary="One lane's capture status.", dependencies=guarded)
    def lane_status(lane: str) -> dict[str, Any]:
        return daemon.lane_status(lane)

    @app.get("/v1/lanes/{lane}/current", response_model=Decision, dependencies=guarded,
             summary="The decision for the shopper in view now (not counted as a check).")
    def current(lane: str) -> Decision:
        return daemon.current(lane)

    @app.post("/v1/lanes/{lane}/check", response_model=Decision, dependencies=guarded,
              summary="The POS asks at the moment alcohol is scanned: ask for ID or not.")
    def check(lane: str) -> Decision:
        return daemon.check(lane)

    @app.post(
        "/v1/lanes/{lane}/receipts", dependencies=guarded, status_code=201,
        summary="The POS records a receipt under the age band of the shopper at the till now.",
        description="Idempotent on receipt_id: 201 when stored, 200 with the stored record for a retry "
        "with the same body, 409 when the id was stored with a different lane, total or items, 422 for "
        "a bad body, 413 for one over api.max_body_bytes. Band 'unknown' when no face is in view or the "
        "estimate is too uncertain (see docs/privacy.md). 'compliance' holds the receipt's outcome "
        "(checked, not_required, violation, no_face, not_restricted; null with compliance off). The body "
        "must be sent as application/json (415 otherwise). Answers and body schema: see openapi_doc.py.",
    )
    async def receipts(lane: str, request: Request) -> JSONResponse:
        if lane not in daemon.lanes:
            raise UnknownLane(lane)
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/json":
            # A web page in a browser on the till may POST text/plain or a form anywhere without a
            # CORS preflight; requiring JSON shuts that door.
            return JSONResponse(status_code=415, content={
                "detail": f"Content-Type {media_type or '(none)'}: expected application/json"})
        receipt = parse_receipt(await request.body())
        sale = await run_in_threadpool(daemon.record_sale, lane, receipt)
        compliance = sale.compliance.to_api() if sale.compliance is not None else None
        return JSONResponse(status_code=201 if sale.created else 200,
                            content={**sale.receipt.to_api(), "created": sale.created, "compliance": compliance})

    openapi_doc.install(app, [lane.name for lane in daemon.config.lanes], secured=token is not None)
    return app


class ApiServer:
    """uvicorn in a background thread; refuses a non-loopback bind without a token.

    bind() takes the port before the daemon starts anything else, so a port in use fails the start
    with nothing opened or written; start() then serves on that socket."""

    def __init__(self, app: Any, host: str, port: int, bearer_token: str | None,
                 limits: HttpLimits | None = None) -> None:
        import uvicorn

        if not is_loopback(host) and not bearer_token:
            raise AgetoolError(f"api.host {host}: not loopback, so api.bearer_token is required; refusing to start")
        self.host = host
        self.port = port
        limits = limits or HttpLimits()
        budget = connection_budget(limits.max_connections, raise_nofile_limit())
        if budget < limits.max_connections:
            log.warning("api: the open-file limit allows %d connections, not api.max_connections %d "
                        "(raise LimitNOFILE)", budget, limits.max_connections)
        self.limits = replace(limits, max_connections=budget)
        self.guard = ConnectionGuard(self.limits)
        # asyncio logs each refused accept with a traceback, uvicorn each bad request: once per 10 s
        limit_repeats(("asyncio", "uvicorn.error", "agetool.edge_runtime.http_limits"))
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                lifespan="off", server_header=False, http=guarded_protocol_class(self.limits, self.guard),
                                timeout_keep_alive=max(1, round(self.limits.keep_alive_timeout_s)))
        self._server = uvicorn.Server(config)
        self._socket: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, name="api", daemon=True)
        self._failed: BaseException | None = None

    def bind(self) -> None:
        """Take the address now; AgetoolError when it is in use or not local."""
        try:
            family, kind, proto, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0]
            sock = listening_socket(family, kind, proto, self.guard)
        except OSError as exc:
            raise AgetoolError(f"api: cannot listen on {self.host}:{self.port} ({exc})") from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        except OSError as exc:
            sock.close()
            raise AgetoolError(f"api: cannot listen on {self.host}:{self.port} "
                               f"({exc.strerror or exc}; is another agetool serve running?)") from None
        self.port = sock.getsockname()[1]
        self._socket = sock

    def _serve(self) -> None:
        try:
            self._server.run(sockets=[self._socket] if self._socket is not None else None)
        except SystemExit as exc:  # uvicorn exits this way when it cannot bind
            self._failed = exc

    def start(self, timeout_s: float = 15.0) -> None:
        if self._socket is None:
            self.bind()
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise AgetoolError(f"api: cannot listen on {self.host}:{self.port} (port in use or address not local?)")
            time.sleep(0.02)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.ident is not None:
            self._thread.join(10.0)
        if self._socket is not None:
            self._socket.close()
