"""A camera-like RTSP server for tests and benches: serves an H.264 MP4 in real time on 127.0.0.1.

Runs with Debian's ``/usr/bin/python3`` (the GStreamer bindings are not in the venv), independent of streamseg:

    /usr/bin/python3 tests/rtsp_server.py --port 8554 --mount /cam --file clip.mp4 [--user u --password p]

Every client gets its own pipeline reading the file from its start, paced to the clock like a camera. Prints
``READY rtsp://127.0.0.1:PORT/MOUNT`` on stdout once listening; SIGTERM/SIGINT stop it. Binds 127.0.0.1 only.
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", action="append", required=True, help="mount point, e.g. /cam (repeatable)")
    parser.add_argument("--file", action="append", required=True, help="H.264 mp4 for the mount of the same rank")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--parent-pipe", action="store_true", help="quit when stdin closes (the parent died)")
    args = parser.parse_args()
    if len(args.mount) != len(args.file):
        parser.error("give one --file per --mount")

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    for mount, path in zip(args.mount, args.file):
        factory = GstRtspServer.RTSPMediaFactory()
        location = path.replace("\\", "\\\\").replace('"', '\\"')
        factory.set_launch(f'( filesrc location="{location}" ! qtdemux ! h264parse '
                           f'! rtph264pay name=pay0 pt=96 config-interval=-1 )')
        factory.set_shared(False)
        if args.user:
            permissions = GstRtspServer.RTSPPermissions()
            permissions.add_permission_for_role("camera", "media.factory.access", True)
            permissions.add_permission_for_role("camera", "media.factory.construct", True)
            factory.set_permissions(permissions)
        mounts.add_factory(mount, factory)
    if args.user:
        auth = GstRtspServer.RTSPAuth()
        token = GstRtspServer.RTSPToken()
        token.set_string(GstRtspServer.RTSP_TOKEN_MEDIA_FACTORY_ROLE, "camera")
        auth.add_basic(GstRtspServer.RTSPAuth.make_basic(args.user, args.password), token)
        server.set_auth(auth)
    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    if args.parent_pipe:
        # stdin is a pipe from the parent: when the parent dies, the pipe closes and the server goes too
        GLib.io_add_watch(GLib.IOChannel.unix_new(sys.stdin.fileno()), GLib.PRIORITY_DEFAULT,
                          GLib.IOCondition.HUP | GLib.IOCondition.IN, lambda *_: loop.quit() or False)
    print(f"READY rtsp://127.0.0.1:{args.port}{args.mount[0]}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
