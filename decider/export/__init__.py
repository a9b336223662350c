"""Exporters of the decision stream (`decider export`): a durable cursor, at-least-once, in order."""

from decider.export.exporter import Exporter, SendFailed, Sink
from decider.export.otlp_logs import OtlpLogsSink
from decider.export.webhook import WebhookSink

__all__ = ["Exporter", "Sink", "SendFailed", "OtlpLogsSink", "WebhookSink"]
