"""The live view's HTTP API (FastAPI): the page, the streams with their state, video and bags, sources added and
removed, health.  The OpenAPI schema is at ``/openapi.json``.

=====================================  ==============================================================================
``GET /``                               the page
``GET /streams``                        every stream: state, reason, pipeline, fps, latency p50/p99, drops, bags
``GET /streams/{id}``                   one stream (404 when unknown)
``GET /streams/{id}/video``             the annotated video, MJPEG (``multipart/x-mixed-replace``)
``GET /streams/{id}/frame.jpg``         the latest annotated frame
``GET /streams/{id}/bags/{n}.jpg``      a scanner stream's bag thumbnail
``POST /streams``                       attach a source (a YAML ``sources:`` entry as JSON); 201, 400, 409
``DELETE /streams/{id}``                detach a stream; 404 when unknown
``GET /health``                         200 healthy / 503 unhealthy, with the problems
=====================================  ==============================================================================

With a token every request needs ``Authorization: Bearer TOKEN`` or ``?token=TOKEN`` (401 otherwise).  A view
of published results (``amodal view``) has no engine to change: ``POST``/``DELETE`` answer 501.
"""
from __future__ import annotations

import asyncio
import hmac
from typing import Any
from urllib.parse import parse_qs

from fastapi import Body, FastAPI, HTTPException
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from amodal.engine.web.control import EngineControl, StreamExistsError, UnknownStreamError
from amodal.engine.web.page import PAGE_HTML
from amodal.engine.web.state import LiveState
from amodal.errors import ConfigError

BOUNDARY = "amodalframe"
#: how long ``frame.jpg`` waits for a first picture of a stream
FIRST_FRAME_WAIT_S = 3.0


class BearerTokenMiddleware:
    """Every HTTP request must carry the token (``Authorization: Bearer``, or ``?token=`` for the page and its
    images, which a browser cannot give headers); else 401."""

    def __init__(self, app, token: str) -> None:
        self.app = app
        self.token = token.encode()

    def _authorized(self, scope) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"authorization" and value[:7].lower() == b"bearer ":
                return hmac.compare_digest(value[7:].strip(), self.token)
        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[-1]
        return hmac.compare_digest(given.encode(), self.token)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and not self._authorized(scope):
            response = JSONResponse({"detail": "missing or wrong token: send 'Authorization: Bearer TOKEN' "
                                               "(or ?token=TOKEN in the page's address)"},
                                    status_code=401, headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def build_app(state: LiveState, control: EngineControl | None, *, token: str | None = None, max_fps: float = 10.0,
              source: str = "this engine") -> FastAPI:
    """The app over ``state``; ``control`` None: a view of published results (no sources to add or remove);
    ``source``: what the page says it shows."""
    app = FastAPI(title="amodal live view", docs_url=None, redoc_url=None,
                  description="Streams of an amodal engine: state, latency, annotated video; sources added and "
                              "removed at runtime.")
    poll_s = min(0.05, 0.5 / max_fps)

    def stream_or_404(stream_id: str) -> dict:
        for s in state.streams():
            if s["id"] == stream_id:
                return s
        raise HTTPException(404, f"no stream {stream_id!r}")

    def need_control() -> EngineControl:
        if control is None:
            raise HTTPException(501, f"this view shows the published results of {source}: add and remove "
                                     f"sources on that engine")
        return control

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return PAGE_HTML

    @app.get("/streams", summary="every stream with its state, pipeline, fps, latency, drops and bags")
    def list_streams() -> dict[str, Any]:
        return {"control": control is not None, "source": source, "streams": state.streams()}

    @app.get("/streams/{stream_id}", summary="one stream")
    def get_stream(stream_id: str) -> dict[str, Any]:
        return stream_or_404(stream_id)

    @app.post("/streams", status_code=201, summary="attach a source: a URI or a YAML sources: entry as JSON")
    def add_stream(body: Any = Body(..., examples=[{"uri": "synthetic://shapes", "stream_id": "cam3",
                                                     "pipeline": "default"}])) -> dict[str, Any]:
        ctl = need_control()
        try:
            stream_id = ctl.add(body)
        except StreamExistsError as exc:
            raise HTTPException(409, str(exc)) from None
        except ConfigError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"id": stream_id}

    @app.delete("/streams/{stream_id}", summary="detach a stream (its queued frames are still analysed)")
    def remove_stream(stream_id: str) -> dict[str, Any]:
        ctl = need_control()
        try:
            ctl.remove(stream_id)
        except UnknownStreamError as exc:
            raise HTTPException(404, str(exc)) from None
        return {"removed": stream_id}

    @app.get("/health", summary="200 when healthy, 503 with the problems otherwise")
    def health() -> JSONResponse:
        healthy, report = state.health()
        return JSONResponse(report, status_code=200 if healthy else 503)

    @app.get("/streams/{stream_id}/frame.jpg", summary="the latest annotated frame (JPEG)",
             response_class=Response)
    async def frame_jpg(stream_id: str) -> Response:
        deadline = asyncio.get_running_loop().time() + FIRST_FRAME_WAIT_S
        first = state.jpeg(stream_id)
        if first is None:
            raise HTTPException(404, f"no stream {stream_id!r}")
        while True:  # a fresh picture: the stream is drawn only while someone asks for it
            state.want(stream_id)
            got = state.jpeg(stream_id)
            if got is None:
                raise HTTPException(404, f"stream {stream_id!r} is gone")
            if got[1] is not None and (got[0] != first[0] or asyncio.get_running_loop().time() > deadline):
                return Response(got[1], media_type="image/jpeg", headers={"Cache-Control": "no-store"})
            if asyncio.get_running_loop().time() > deadline:
                raise HTTPException(404, f"stream {stream_id!r} has no picture yet")
            await asyncio.sleep(poll_s)

    @app.get("/streams/{stream_id}/video", summary="the annotated video as MJPEG (multipart/x-mixed-replace)",
             response_class=StreamingResponse)
    async def video(stream_id: str) -> StreamingResponse:
        if state.jpeg(stream_id) is None:
            raise HTTPException(404, f"no stream {stream_id!r}")

        async def parts():
            seq = -1
            while not state.closing:
                state.want(stream_id)
                got = state.jpeg(stream_id)
                if got is None:  # removed: the response ends
                    return
                if got[1] is not None and got[0] != seq:
                    seq = got[0]
                    yield (f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(got[1])}\r\n\r\n"
                           .encode() + got[1] + b"\r\n")
                else:
                    await asyncio.sleep(poll_s)

        return StreamingResponse(parts(), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                                 headers={"Cache-Control": "no-store"})

    @app.get("/streams/{stream_id}/bags/{frame_index}.jpg", summary="a scanner stream's bag thumbnail",
             response_class=Response)
    def bag_jpg(stream_id: str, frame_index: int) -> Response:
        jpeg = state.bag_jpeg(stream_id, frame_index)
        if jpeg is None:
            raise HTTPException(404, f"stream {stream_id!r} has no bag {frame_index} (only the latest are kept)")
        return Response(jpeg, media_type="image/jpeg")

    if token is not None:
        app.add_middleware(BearerTokenMiddleware, token=token)
    return app
