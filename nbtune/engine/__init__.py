"""Headless training engine: importable without any UI library, runnable under torchrun / accelerate launch."""
from nbtune.engine.control import Control
from nbtune.engine.run import Run
from nbtune.engine.sinks import ConsoleSink, JsonlSink, MemorySink, MetricSink, TensorBoardSink

__all__ = ["Control", "Run", "ConsoleSink", "JsonlSink", "MemorySink", "MetricSink", "TensorBoardSink"]
