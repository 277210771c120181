"""Threaded graph runtime: a line of nodes, one thread each, joined by bounded queues with a per-edge policy."""

from streamseg.graph.metrics import GraphReport, StageMetrics
from streamseg.graph.queues import POLICIES, StageInput
from streamseg.graph.runtime import Node, Pipeline

__all__ = ["GraphReport", "Node", "POLICIES", "Pipeline", "StageInput", "StageMetrics"]
