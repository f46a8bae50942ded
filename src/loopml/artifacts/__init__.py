"""Artifact store: local buckets under `$LOOPML_HOME/buckets`, or a real store through fsspec."""

from loopml.artifacts.store import ArtifactStore, is_bucket_uri

__all__ = ["ArtifactStore", "is_bucket_uri"]
