"""Images without Docker: Dockerfile builds into snapshots + envs, a catalog, runtimes."""

from loopml.images.catalog import ImageRef, parse_ref
from loopml.images.prebuilt import match_prebuilt
from loopml.images.runtime import ImageRuntime
from loopml.images.service import ImageService

__all__ = ["ImageRef", "ImageRuntime", "ImageService", "match_prebuilt", "parse_ref"]
