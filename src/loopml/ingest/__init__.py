"""loopml.ingest: Pub/Sub-shaped topics and subscriptions over a durable message log."""

from loopml.ingest.service import IngestService

__all__ = ["IngestService"]
