"""The HTTP side of ``streamseg serve`` (aiohttp, one port): the page, the JSON API, server-sent events, MJPEG
live views, event clips, ``/metrics`` and ``/healthz``, all over a :class:`~streamseg.service.core.CameraService`.

Routes (README "Camera service"):

==================================  ==================================================================================
``GET /``                           the page (``static/index.html``, plain HTML and JavaScript, nothing from outside)
``GET /api/cameras``                ``{"cameras": [...]}``
``POST /api/cameras``               body: one ``[[sources]]`` table as JSON -> 201 camera; 400 bad spec; 409 id taken
``PUT /api/cameras/<id>``           body: any of url, zones, lines -> 200 camera (only it restarts); 400; 404
``DELETE /api/cameras/<id>``        204; 404 unknown
``GET /api/events``                 ``?camera=&kind=&since=&until=&limit=`` -> ``{"events": [...]}`` (event store)
``GET /api/events/stream``          server-sent events: ``event: event`` / ``event: state``, a comment ping every 15 s
``GET /cameras/<id>/live.mjpg``     multipart MJPEG of the annotated frames, at most ``serve.live_fps``
``GET /cameras/<id>/latest.jpg``    the newest annotated JPEG; keeps the camera encoding for ``SNAPSHOT_LEASE`` s
                                    (the page polls it beyond ``LIVE_STREAMS`` cameras, see below)
``GET /cameras/<id>/clip?t=T``      the event clip that covers wall time ``T`` (video/mp4), 404 when none
``GET /metrics``, ``GET /healthz``  Prometheus exposition; 200 / 503 with the health details as JSON
==================================  ==================================================================================

Errors are ``{"error": "<one line>"}``. With a token every request needs ``Authorization: Bearer <token>``; a
browser may instead open any page once with ``?token=<token>``, which sets a cookie (derived from the token, never
the token itself) and redirects to the same address without it. Refused requests are logged with method, path and
peer, never with the token or the query string.

A browser opens at most 6 connections to one server (HTTP/1.1): every ``live.mjpg`` holds one for as long as it
shows, and the event stream one more, so a page with more MJPEG tiles would starve its own requests. The page
therefore streams the first ``LIVE_STREAMS`` cameras and polls ``latest.jpg`` for the others.

Nothing here is global: the state of a server lives in its :class:`aiohttp.web.Application`, so two servers (tests)
in one process share nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import math
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

from aiohttp import web

from streamseg.errors import ConfigError, StreamsegError
from streamseg.redact import redact
from streamseg.service.core import CameraExists

log = logging.getLogger("streamseg.service")

STATIC = Path(__file__).with_name("static")
PING_INTERVAL = 15.0
"""Seconds between SSE comment pings: proxies and browsers keep an idle stream open."""
SSE_QUEUE = 256
"""Messages a slow SSE client may have waiting; one more and it is disconnected (its browser reconnects), so the
pipeline threads that publish never wait for a client."""
SNAPSHOT_LEASE = 3.0
"""Seconds a ``latest.jpg`` request keeps its camera's pictures encoded: the poller's next request finds a fresh
one, and a page that went away stops costing CPU soon after."""
COOKIE = "streamseg_session"
BOUNDARY = "frame"

_SERVICE = web.AppKey("service", object)
_AUTH = web.AppKey("auth", object)
_HUB = web.AppKey("hub", object)
_CLOSING = web.AppKey("closing", asyncio.Event)
_PING = web.AppKey("ping_interval", float)
_QUEUE = web.AppKey("sse_queue", int)
_LEASES = web.AppKey("leases", object)


def one_line(text: object) -> str:
    """``text`` as one redacted line (error bodies and log lines)."""
    return redact(" ".join(str(text).split())) or "error"


def error(status: int, message: object) -> web.Response:
    return web.json_response({"error": one_line(message)}, status=status)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _dumps(value: Any) -> str:
    """One line of JSON; credentials in URLs masked as a last guard (the service already redacts)."""
    return redact(json.dumps(value, separators=(",", ":"), allow_nan=False, default=str))


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(text=_dumps(value), status=status, content_type="application/json")


# -- authentication -------------------------------------------------------------------------------------------------

class _Auth:
    """Bearer-token check. The cookie holds an HMAC of the token, so the token itself is never sent back."""

    def __init__(self, token: str):
        self.token = token.encode()
        self.session = hmac.new(self.token, b"streamseg serve session", hashlib.sha256).hexdigest()

    def allows(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token):
            return True
        cookie = request.cookies.get(COOKIE)
        return cookie is not None and hmac.compare_digest(cookie.encode(), self.session.encode())

    def query_token_ok(self, request: web.Request) -> bool:
        value = request.query.get("token")
        return value is not None and hmac.compare_digest(value.encode(), self.token)


@web.middleware
async def _guard(request: web.Request, handler):
    """Token check (when the app has one), then any error as one JSON line."""
    auth: _Auth | None = request.app[_AUTH]
    if auth is not None and not auth.allows(request):
        if request.method == "GET" and auth.query_token_ok(request):
            # the page opened once with ?token=: a cookie for what it loads next, and the token out of the address
            query = request.rel_url.query.copy()
            del query["token"]
            response = web.Response(status=303, headers={"Location": str(request.rel_url.with_query(query))})
            response.set_cookie(COOKIE, auth.session, httponly=True, samesite="Strict", path="/")
            return response
        log.warning("refused %s %s from %s: no valid token", request.method, request.path, request.remote)
        return web.json_response({"error": "unauthorized: send Authorization: Bearer <token>"}, status=401,
                                 headers={"WWW-Authenticate": 'Bearer realm="streamseg"'})
    try:
        return await handler(request)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        response = error(err.status, err.reason)
        if "Allow" in err.headers:  # 405: which methods the path takes
            response.headers["Allow"] = err.headers["Allow"]
        return response
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception as err:  # noqa: BLE001 - a request must not take the server down; the client gets one line
        log.error("%s %s failed: %s", request.method, request.path, one_line(f"{type(err).__name__}: {err}"))
        return error(500, "internal error (see the service log)")


# -- server-sent events ---------------------------------------------------------------------------------------------

class _Client:
    """One SSE connection's bounded inbox, touched only from the event loop."""

    def __init__(self, limit: int):
        self.messages: deque[str] = deque()
        self.limit = limit
        self.overflowed = False
        self.ready = asyncio.Event()

    def offer(self, message: str) -> None:
        if len(self.messages) >= self.limit:
            self.overflowed = True
        else:
            self.messages.append(message)
        self.ready.set()


class _Hub:
    """One subscription to the service for all SSE clients: the callback (pipeline threads) formats the message
    once and hands it to the event loop with ``call_soon_threadsafe``; it never waits for a client."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int):
        self.loop = loop
        self.limit = limit
        self.clients: set[_Client] = set()
        self.unsubscribe = None

    def publish(self, kind: str, payload: dict) -> None:
        """The service's callback, called from any thread."""
        try:
            message = f"event: {kind}\ndata: {_dumps(payload)}\n\n"
            self.loop.call_soon_threadsafe(self._fan_out, message)
        except RuntimeError:  # the loop is closed: the server is gone
            pass
        except Exception as err:  # noqa: BLE001 - never raise into a pipeline thread
            log.warning("event stream: cannot send a %s message: %s", kind, one_line(err))

    def _fan_out(self, message: str) -> None:
        for client in self.clients:
            client.offer(message)


async def _on_startup(app: web.Application) -> None:
    hub = _Hub(asyncio.get_running_loop(), app[_QUEUE])
    hub.unsubscribe = app[_SERVICE].subscribe(hub.publish)
    app[_HUB] = hub
    leases = app[_LEASES]
    leases.sweeper = asyncio.get_running_loop().create_task(leases.sweep())


async def _on_shutdown(app: web.Application) -> None:
    """Ends the streaming responses (they would otherwise hold the shutdown for their whole timeout)."""
    app[_CLOSING].set()
    hub = app.get(_HUB)
    if hub is not None:
        for client in hub.clients:
            client.ready.set()


async def _on_cleanup(app: web.Application) -> None:
    leases = app[_LEASES]
    if leases.sweeper is not None:
        leases.sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await leases.sweeper
    leases.release(everything=True)
    hub = app.get(_HUB)
    if hub is not None and hub.unsubscribe is not None:
        hub.unsubscribe()
        hub.unsubscribe = None


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def events_stream(request: web.Request) -> web.StreamResponse:
    app = request.app
    hub: _Hub = app[_HUB]
    client = _Client(hub.limit)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    hub.clients.add(client)
    try:
        await response.write(b"retry: 1000\n: connected\n\n")
        while not app[_CLOSING].is_set():
            try:
                await asyncio.wait_for(client.ready.wait(), app[_PING])
            except asyncio.TimeoutError:
                await response.write(b": ping\n\n")
                continue
            client.ready.clear()
            if client.overflowed:
                log.warning("event stream: client %s too slow (%d messages waiting), disconnected",
                            request.remote, client.limit)
                break
            while client.messages:
                await response.write(client.messages.popleft().encode())
    except ConnectionError:  # the client went away
        pass
    finally:
        hub.clients.discard(client)
    return response


# -- cameras --------------------------------------------------------------------------------------------------------

async def _call(function, *args, **kwargs):
    """Service calls that may touch the disk or join threads run off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, lambda: function(*args, **kwargs))


async def list_cameras(request: web.Request) -> web.Response:
    return _json({"cameras": await _call(request.app[_SERVICE].cameras)})


async def add_camera(request: web.Request) -> web.Response:
    try:
        spec = await request.json(loads=json.loads)
    except (ValueError, UnicodeDecodeError):
        return error(400, "the body must be a JSON object: {\"url\": ..., \"id\": ...}")
    if not isinstance(spec, dict):
        return error(400, "the body must be a JSON object: {\"url\": ..., \"id\": ...}")
    try:
        camera = await _call(request.app[_SERVICE].add_camera, spec)
    except CameraExists as err:
        return error(409, err)
    except ConfigError as err:
        return error(400, err)
    except StreamsegError as err:  # the service is stopping
        return error(503, err)
    return _json(camera, status=201)


async def update_camera(request: web.Request) -> web.Response:
    """Change a camera's url, zones or lines (the others are kept); only that camera restarts."""
    camera_id = request.match_info["id"]
    try:
        changes = await request.json(loads=json.loads)
    except (ValueError, UnicodeDecodeError):
        changes = None
    if not isinstance(changes, dict):
        return error(400, "the body must be a JSON object: {\"zones\": [...], \"lines\": [...], \"url\": ...}")
    try:
        camera = await _call(request.app[_SERVICE].update_camera, camera_id, changes)
    except KeyError:
        return error(404, f"unknown camera: {camera_id}")
    except ConfigError as err:
        return error(400, err)
    except StreamsegError as err:  # the service is stopping
        return error(503, err)
    return _json(camera)


async def remove_camera(request: web.Request) -> web.Response:
    camera_id = request.match_info["id"]
    try:
        await _call(request.app[_SERVICE].remove_camera, camera_id)
    except KeyError:
        return error(404, f"unknown camera: {camera_id}")
    return web.Response(status=204)


async def get_camera(request: web.Request) -> web.Response:
    camera_id = request.match_info["id"]
    try:
        return _json(await _call(request.app[_SERVICE].camera, camera_id))
    except KeyError:
        return error(404, f"unknown camera: {camera_id}")


async def live_mjpeg(request: web.Request) -> web.StreamResponse:
    """MJPEG of the camera's annotated frames, at most ``serve.live_fps``; ``service.watch`` is held exactly while
    this client is connected, so nothing is encoded for nobody."""
    service, camera_id = request.app[_SERVICE], request.match_info["id"]
    period = 1.0 / float(service.config.serve.live_fps)
    try:
        watching = service.watch(camera_id)
        watching.__enter__()
    except KeyError:
        return error(404, f"unknown camera: {camera_id}")
    try:
        response = web.StreamResponse(headers={
            "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
            "Cache-Control": "no-cache, no-store", "Pragma": "no-cache"})
        await response.prepare(request)
        last, next_at = None, 0.0
        while not request.app[_CLOSING].is_set() and not _gone(request):
            now = time.monotonic()
            if now < next_at:
                await asyncio.sleep(min(next_at - now, 0.25))
                continue
            try:
                sequence, jpeg = service.latest_jpeg(camera_id)
            except KeyError:  # the camera was removed
                break
            if jpeg is None or sequence == last:
                await asyncio.sleep(min(period, 0.02))
                continue
            last, next_at = sequence, now + period
            await response.write(b"--" + BOUNDARY.encode() + b"\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                 + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
    except ConnectionError:  # the client went away
        pass
    finally:
        watching.__exit__(None, None, None)
    return response


class _Leases:
    """``service.watch`` held on behalf of ``latest.jpg`` pollers, each until ``lease`` seconds after its camera's
    last request (released by a sweeper task, and all at shutdown). Event loop only."""

    def __init__(self, service, lease: float):
        self.service, self.lease = service, lease
        self.held: dict[str, list] = {}  # camera id -> [watch context, expiry (monotonic)]
        self.sweeper: asyncio.Task | None = None

    def touch(self, camera_id: str) -> None:
        """Extend (or take) the lease of ``camera_id``; KeyError if unknown."""
        entry = self.held.get(camera_id)
        if entry is None:
            watching = self.service.watch(camera_id)
            watching.__enter__()
            entry = self.held[camera_id] = [watching, 0.0]
        entry[1] = time.monotonic() + self.lease

    def release(self, everything: bool = False) -> None:
        now = time.monotonic()
        for camera_id, (watching, expiry) in list(self.held.items()):
            if everything or expiry <= now:
                del self.held[camera_id]
                watching.__exit__(None, None, None)

    async def sweep(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.lease / 2))
            self.release()


async def latest_jpeg(request: web.Request) -> web.Response:
    """The newest annotated JPEG (204 while there is none yet); see :data:`SNAPSHOT_LEASE`."""
    service, camera_id = request.app[_SERVICE], request.match_info["id"]
    try:
        request.app[_LEASES].touch(camera_id)
        sequence, jpeg = service.latest_jpeg(camera_id)
    except KeyError:
        return error(404, f"unknown camera: {camera_id}")
    headers = {"Cache-Control": "no-cache, no-store", "X-Frame-Sequence": str(sequence)}
    if jpeg is None:
        return web.Response(status=204, headers=headers)
    return web.Response(body=jpeg, content_type="image/jpeg", headers=headers)


async def clip(request: web.Request) -> web.StreamResponse:
    service, camera_id = request.app[_SERVICE], request.match_info["id"]
    text = request.query.get("t")
    if text is None:
        return error(400, "t: missing (the event's wall time, Unix seconds or ISO-8601)")
    try:
        from streamseg.sinks.event_store import parse_time

        moment = parse_time(text, "t")
    except StreamsegError as err:
        return error(400, err)
    if not math.isfinite(moment):
        return error(400, f"t: not a time: {text!r}")
    try:
        path = await _call(service.clip_for, camera_id, moment)
    except KeyError:
        return error(404, f"unknown camera: {camera_id}")
    if path is None or not Path(path).is_file():
        return error(404, f"no clip of {camera_id} covers {moment:.3f}")
    return web.FileResponse(path, headers={"Content-Type": "video/mp4", "Cache-Control": "no-cache"})


# -- events, metrics, health, page ----------------------------------------------------------------------------------

async def list_events(request: web.Request) -> web.Response:
    from streamseg.sinks.event_store import parse_time

    query = request.query
    arguments: dict[str, Any] = {"camera": query.get("camera") or None, "kind": query.get("kind") or None}
    try:
        for name in ("since", "until"):
            arguments[name] = parse_time(query[name], name) if query.get(name) else None
    except StreamsegError as err:
        return error(400, err)
    if query.get("limit"):
        try:
            arguments["limit"] = int(query["limit"])
            if arguments["limit"] < 1:
                raise ValueError
        except ValueError:
            return error(400, f"limit: expected an integer >= 1, got {query['limit']!r}")
    try:
        events = await _call(request.app[_SERVICE].query_events, **arguments)
    except StreamsegError as err:
        return error(400, err)
    return _json({"events": events})


async def metrics(request: web.Request) -> web.Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    body = await _call(request.app[_SERVICE].metrics_text)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(request: web.Request) -> web.Response:
    ok, details = await _call(request.app[_SERVICE].health)
    return _json({"ok": bool(ok), **details}, status=200 if ok else 503)


async def index(request: web.Request) -> web.StreamResponse:
    page = STATIC / "index.html"
    if not page.is_file():  # an installation without the package data: say so rather than a bare 404
        return error(500, f"the page is missing from this installation: {page}")
    return web.FileResponse(page, headers={"Cache-Control": "no-cache"})


def build_app(service, token: str | None = None, *, ping_interval: float = PING_INTERVAL,
              sse_queue: int = SSE_QUEUE, snapshot_lease: float = SNAPSHOT_LEASE) -> web.Application:
    """The application over ``service`` (a CameraService). ``token``: every request must carry it (see the module
    docstring); None: no check (loopback only: :func:`serve_http` refuses another host without one)."""
    app = web.Application(middlewares=[_guard], client_max_size=1 << 20)
    app[_SERVICE] = service
    app[_AUTH] = _Auth(token) if token else None
    app[_CLOSING] = asyncio.Event()
    app[_PING] = ping_interval
    app[_QUEUE] = sse_queue
    app[_LEASES] = _Leases(service, snapshot_lease)
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    app.on_cleanup.append(_on_cleanup)
    app.router.add_get("/", index)
    app.router.add_get("/api/cameras", list_cameras)
    app.router.add_post("/api/cameras", add_camera)
    app.router.add_get("/api/cameras/{id}", get_camera)
    app.router.add_put("/api/cameras/{id}", update_camera)
    app.router.add_delete("/api/cameras/{id}", remove_camera)
    app.router.add_get("/api/events", list_events)
    app.router.add_get("/api/events/stream", events_stream)
    app.router.add_get("/cameras/{id}/live.mjpg", live_mjpeg)
    app.router.add_get("/cameras/{id}/latest.jpg", latest_jpeg)
    app.router.add_get("/cameras/{id}/clip", clip)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    if STATIC.is_dir():
        app.router.add_static("/static/", STATIC, show_index=False)
    return app


class serve_http:  # noqa: N801 - used like a function: ``async with serve_http(...) as server``
    """The app on ``host:port`` (0: any free port) in the running event loop. ``bind()`` takes the port (a port in
    use fails there, before the caller starts its cameras); ``await start()`` binds if that was not done, serves,
    returns the URL and logs ``serving on <url>``; ``await stop()`` ends open streams and closes the port. Also an
    async context.

    A host that is not loopback without a token is a one-line :class:`~streamseg.errors.ConfigError`."""

    def __init__(self, service, host: str = "127.0.0.1", port: int = 8080, token: str | None = None, **app_options):
        if not is_loopback(host) and not token:
            raise ConfigError(f"serve.host = {host} is not loopback: a token is required "
                              "(serve.token_file or $STREAMSEG_SERVE_TOKEN)")
        self.service, self.host, self.port, self.token = service, host, port, token
        self.app_options = app_options
        self.runner: web.AppRunner | None = None
        self.socket: socket.socket | None = None
        self.url: str | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        """The event loop it serves in (set by :meth:`start`)."""

    def bind(self) -> None:
        """Take the port (listening, nothing answered until :meth:`start`); a ConfigError if that fails."""
        if self.socket is not None:
            return
        try:
            family, kind, proto, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0]
            listener = socket.socket(family, kind, proto)
        except OSError as err:
            raise ConfigError(f"serve: cannot listen on {self.host}:{self.port}: {err.strerror or err}") from None
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart within TIME_WAIT
            listener.bind(address)
            listener.listen(128)
        except OSError as err:
            listener.close()
            raise ConfigError(f"serve: cannot listen on {self.host}:{self.port}: {err.strerror or err}") from None
        self.socket = listener

    async def start(self) -> str:
        self.bind()
        self.loop = asyncio.get_running_loop()
        self.runner = web.AppRunner(build_app(self.service, self.token, **self.app_options), access_log=None,
                                    shutdown_timeout=5.0)
        await self.runner.setup()
        await web.SockSite(self.runner, self.socket).start()
        port = self.socket.getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.port, self.url = port, f"http://{host}:{port}/"
        log.info("serving on %s", self.url)
        return self.url

    async def stop(self) -> None:
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()
        if self.socket is not None:
            self.socket.close()
            self.socket = None

    async def __aenter__(self) -> "serve_http":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()


@contextlib.contextmanager
def serving_in_thread(service, host: str = "127.0.0.1", port: int = 0, token: str | None = None, **app_options):
    """The server in its own thread and event loop for the block (tests, benches, embedding); yields the
    :class:`serve_http` with its ``url``."""
    import threading

    server = serve_http(service, host, port, token, **app_options)
    loop = asyncio.new_event_loop()
    started, failure = threading.Event(), []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller
            failure.append(err)
            started.set()
            return
        started.set()
        loop.run_forever()
        loop.run_until_complete(server.stop())
        loop.close()

    thread = threading.Thread(target=run, name="streamseg-http", daemon=True)
    thread.start()
    started.wait()
    if failure:
        thread.join()
        raise failure[0]
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
