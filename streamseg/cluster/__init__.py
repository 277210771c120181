"""Running on a Ray cluster: ``streamseg run --cluster ADDRESS`` (``[cluster]`` in a pipeline file).

- :mod:`~streamseg.cluster.connect`: join a cluster, or start a private loopback one (``local[:N]``);
- :mod:`~streamseg.cluster.chunks`: keyframe-aligned chunks of video files that decode exactly as the whole file;
- :mod:`~streamseg.cluster.work`, :mod:`~streamseg.cluster.actors`: what model actors do with a work item, and the
  pool that keeps them fed and retries items whose worker died;
- :mod:`~streamseg.cluster.files`: the driver of file and image-folder runs (track per source in order, join);
- :mod:`~streamseg.cluster.manifest`: the work folder that makes outputs exactly-once and runs resumable;
- :mod:`~streamseg.cluster.cameras`: live cameras as supervised camera actors.

Ray is an optional extra (``pip install 'streamseg[cluster]'``); nothing here imports it at module level.
"""
