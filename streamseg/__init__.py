"""streamseg: video instance segmentation, from decoded frames to annotated video, detections and events.

Stage packages: ``sources`` (frames in), ``graph`` (threads and queues), ``models`` (detectors), ``ops`` (tensor
and mask operations), ``sinks`` (outputs). Shared data types live in :mod:`streamseg.types`; the CLI and
:mod:`streamseg.pipeline` are the only places that compose stages.
"""

__version__ = "0.1.0"
