"""``streamseg serve``: the always-on camera service (:mod:`.core`) and its HTTP side (:mod:`.http`)."""

from streamseg.service.core import CameraExists, CameraService

__all__ = ["CameraService", "CameraExists"]
