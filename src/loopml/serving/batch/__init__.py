"""Batch prediction (Vertex BatchPredictionJobs): see docs/batch-prediction.md."""

from loopml.serving.batch.service import BatchService

__all__ = ["BatchService"]
