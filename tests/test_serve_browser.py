"""The ``streamseg serve`` page in a real browser (Debian's chromium driven by Playwright, ../shared/GUIDE.md section
8) over the real CameraService, the demo model and two real RTSP cameras (tests/rtsp_server.py): a generated street
scene whose zone and line are the camera's event rules, and the moving-block test clip. The page loads with a tile
per camera, each tile's picture changes over time, an event the scene causes appears in the feed within 2 s of the
frame that caused it (and its clip plays), and a camera killed mid-test turns "down" on the page and "up" again
when it comes back. Also: a token-protected server opened once with ``?token=``, and six cameras on one page (a
browser's 6 connections per server: four tiles stream MJPEG, the others poll)."""

from __future__ import annotations

import importlib.util
import json
import time
import urllib.request
from pathlib import Path

import pytest

from live_server import RtspServer, gstreamer_missing, make_clip, scene_clip, wait_for
from streamseg.config import build_config
from streamseg.evaluation import SCENE_TRACKER

CHROMIUM = Path("/usr/bin/chromium")
FPS = 5  # the scene's frame rate: the demo model on two CI cores keeps up with most frames of both cameras


def _why_not() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found (Debian's chromium; .ci/run installs it, see ../shared/GUIDE.md section 8)"
    if importlib.util.find_spec("playwright") is None:
        return "playwright (Python) is not installed (the dev extra; see ../shared/GUIDE.md section 8)"
    return gstreamer_missing()


_skip = _why_not()
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")






@pytest.fixture(scope="module")
def cameras(tmp_path_factory):
    folder = tmp_path_factory.mktemp("browser_clips")
    street, scene = scene_clip(folder / "street.mp4", 60, FPS, loops=5)
    block = make_clip(folder / "block.mp4", 300, fps=FPS)
    street_server = RtspServer({"/street": street}, user="viewer", password="Br0wser-pw").start()
    block_server = RtspServer({"/block": block}).start()
    try:
        yield scene, street_server, block_server
    finally:
        street_server.kill()
        block_server.kill()


@pytest.fixture(scope="module")
def page(cameras, tmp_path_factory):
    """The service (demo model) with both cameras, its HTTP server, and the page open in chromium."""
    from playwright.sync_api import sync_playwright

    from streamseg.service.core import CameraService
    from streamseg.service.http import serving_in_thread

    scene, street_server, block_server = cameras
    out = tmp_path_factory.mktemp("browser_out")
    config = build_config({
        "output_dir": str(out), "sinks": {"video": False},
        "tracker": {"enabled": True, **SCENE_TRACKER},
        "live": {"read_timeout": 2.0, "reconnect_initial": 0.2, "reconnect_max": 1.0, "clips": True,
                 "clip_pre": 1.0, "clip_post": 1.0},
        "serve": {"port": 0, "live_fps": 5.0},
        "sources": [
            {"id": "street", "url": street_server.url("/street"),
             "zones": [{"name": "zone", "polygon": [list(p) for p in scene.config.zone]}],
             "lines": [{"name": "line", "points": [list(p) for p in scene.config.line]}]},
            {"id": "block", "url": block_server.url("/block")},
        ]})
    service = CameraService(config)  # the backend from the config: the demo model
    service.start()
    try:
        with serving_in_thread(service, "127.0.0.1", 0) as server, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
            try:
                tab = browser.new_page(viewport={"width": 1400, "height": 900})
                errors = []
                tab.on("pageerror", lambda err: errors.append(str(err)))
                tab.goto(server.url)
                tab.browser = browser
                yield tab, service, server, out, errors, cameras
            finally:
                browser.close()
    finally:
        service.stop()


def state_of(tab, camera_id: str) -> str:
    return tab.locator(f'[data-camera="{camera_id}"] .state').inner_text().strip()


def picture_changes(tab, camera_id: str, timeout: float = 20) -> None:
    img = tab.locator(f'[data-camera="{camera_id}"] img')
    wait_for(lambda: img.evaluate("i => i.complete && i.naturalWidth > 0"), timeout, f"{camera_id}'s first picture")
    first = img.screenshot()
    wait_for(lambda: img.screenshot() != first, timeout, f"{camera_id}'s picture to change", interval=0.3)


def test_page_loads_with_a_live_tile_per_camera(page):
    tab, service, server, out, errors, cameras = page
    assert tab.title() == "streamseg serve"
    tab.wait_for_selector('[data-camera="street"]', timeout=10_000)
    tab.wait_for_selector('[data-camera="block"]', timeout=10_000)
    for camera_id in ("street", "block"):
        wait_for(lambda: state_of(tab, camera_id) == "up", 30, f"{camera_id} up on the page")
        text = tab.locator(f'[data-camera="{camera_id}"]').inner_text()
        assert "since" in text and "fps" in text and "dropped" in text
        picture_changes(tab, camera_id)
    sizes = {cid: tab.locator(f'[data-camera="{cid}"] img').evaluate("i => [i.naturalWidth, i.naturalHeight]")
             for cid in ("street", "block")}
    assert sizes == {"street": [640, 360], "block": [320, 240]}
    html = tab.content()
    assert "Br0wser-pw" not in html and "viewer:" not in html  # the credentials are nowhere on the page
    assert not errors, errors


def test_scene_event_in_the_feed_within_two_seconds_and_its_clip_plays(page):
    tab, service, server, out, errors, cameras = page
    live = '#events li[data-kind][data-camera="street"]:not(.history)'
    wait_for(lambda: tab.locator(live).count() >= 3, 60, "three events of the street scene in the feed", 0.5)
    shown = tab.locator(live).evaluate_all(
        "items => items.map(li => [li.dataset.kind, Number(li.dataset.wallTime), Number(li.dataset.received),"
        " Number(li.dataset.frame)])")
    for kind, wall_time, received, frame in shown:
        assert kind in ("enter", "exit", "cross")
        # wall_time is the capture time of the frame that caused the event; both clocks are this machine's
        delay = received / 1000 - wall_time
        assert -0.05 <= delay <= 2.0, (kind, frame, delay)
    # newest first, and the same events as the store holds
    assert [w for _, w, _, _ in shown] == sorted((w for _, w, _, _ in shown), reverse=True)
    def stored() -> set:
        with urllib.request.urlopen(server.url + "api/events?camera=street", timeout=10) as response:
            return {(e["kind"], e["wall_time"], e["frame"]) for e in json.loads(response.read())["events"]}

    wait_for(lambda: stored() >= {(k, w, f) for k, w, _, f in shown}, 10, "the shown events in /api/events")

    # clicking the oldest shown event plays its clip once the clip is finished (clip_post after the event)
    oldest = tab.locator(live).last
    wall_time = float(oldest.get_attribute("data-wall-time"))
    wait_for(lambda: service.clip_for("street", wall_time) is not None, 30, "the event's clip")
    oldest.click()
    video = tab.locator("#clip")
    wait_for(lambda: video.evaluate("v => v.readyState >= 1 && v.duration > 0"), 15, "the clip to load in <video>")
    assert "/cameras/street/clip?t=" in video.evaluate("v => v.currentSrc")
    assert not errors, errors


def test_camera_killed_turns_down_on_the_page_and_up_when_it_returns(page):
    tab, service, server, out, errors, (scene, street_server, block_server) = page
    wait_for(lambda: state_of(tab, "block") == "up", 30, "block up on the page")
    block_server.kill()
    wait_for(lambda: state_of(tab, "block") == "down", 15, "block down on the page")
    assert state_of(tab, "street") == "up"  # the other camera is not affected
    time.sleep(1.0)
    block_server.start()
    wait_for(lambda: state_of(tab, "block") == "up", 30, "block up again on the page")
    picture_changes(tab, "block")  # and its live picture moves again
    assert not errors, errors


def test_with_a_token_the_page_works_from_one_token_link(page):
    """A server that needs a token: without it the browser gets a 401 line; opened once with ``?token=`` the
    page, its live pictures and its event stream work from the cookie, and the token leaves the address bar."""
    from streamseg.service.http import serving_in_thread

    tab, service = page[0], page[1]
    token = "browser-tok-91c2"
    with serving_in_thread(service, "127.0.0.1", 0, token=token) as server:
        context = tab.browser.new_context()
        try:
            other = context.new_page()
            refused = other.goto(server.url)
            assert refused.status == 401 and "unauthorized" in other.content()
            other.goto(server.url + f"?token={token}")
            assert other.url == server.url  # redirected without the token
            other.wait_for_selector('[data-camera="street"] .state', timeout=10_000)
            wait_for(lambda: other.locator('[data-camera="street"] .state').inner_text().strip() == "up", 20,
                     "street up on the token page")
            picture_changes(other, "street")
            wait_for(lambda: other.locator("#link").inner_text() == "live", 10, "the event stream connected")
            assert token not in other.content()
            assert all(token not in c["value"] for c in context.cookies())
        finally:
            context.close()


def test_the_page_recovers_when_the_server_restarts(page):
    """The HTTP server stopped and started again on the same port (a service restart) under an open page: the
    event stream reconnects by itself and the live pictures move again without a reload."""
    from streamseg.service.http import serving_in_thread

    tab, service = page[0], page[1]
    context = tab.browser.new_context()
    try:
        other = context.new_page()
        with serving_in_thread(service, "127.0.0.1", 0) as server:
            port = server.port
            other.goto(server.url)
            picture_changes(other, "street")
            wait_for(lambda: other.locator("#link").inner_text() == "live", 10, "the event stream connected")
        wait_for(lambda: other.locator("#link").inner_text() != "live", 10, "the page to see the server gone")
        time.sleep(1.0)
        with serving_in_thread(service, "127.0.0.1", port):
            wait_for(lambda: other.locator("#link").inner_text() == "live", 15, "the event stream back")
            picture_changes(other, "street")
            picture_changes(other, "block")
    finally:
        context.close()


def test_six_cameras_stream_or_poll_without_starving_the_page(page, tmp_path):
    """A browser opens at most 6 connections to a server: with six cameras the page streams four, polls the
    others' latest.jpg, and its own requests still go through; removed cameras leave the page."""
    tab, service = page[0], page[1]
    clip = make_clip(tmp_path / "more.mp4", 60, fps=FPS)
    extra = [f"more{i}" for i in range(4)]
    with RtspServer({f"/{name}": clip for name in extra}) as server:
        for name in extra:
            service.add_camera({"id": name, "url": server.url(f"/{name}")})
        try:
            # added while the page is open: their tiles appear
            wait_for(lambda: tab.locator("#cameras [data-camera]").count() == 6, 20, "six tiles")
            # a fresh load with six cameras
            tab.reload()
            ids = ["street", "block", *extra]
            wait_for(lambda: tab.locator("#cameras [data-camera]").count() == 6, 20, "six tiles after a reload")
            for camera_id in ids:
                wait_for(lambda: state_of(tab, camera_id) == "up", 30, f"{camera_id} up on the page")
            views = tab.locator("#cameras [data-camera]").evaluate_all("ts => ts.map(t => t.dataset.view)")
            assert views.count("stream") == 4 and views.count("poll") == 2, views
            for camera_id in ids:
                picture_changes(tab, camera_id)
            started = time.monotonic()
            assert tab.evaluate("fetch('/api/cameras').then(r => r.json()).then(j => j.cameras.length)") == 6
            assert time.monotonic() - started < 2.0
        finally:
            for name in extra:
                service.remove_camera(name)
    wait_for(lambda: tab.locator("#cameras [data-camera]").count() == 2, 10, "removed cameras' tiles gone")
