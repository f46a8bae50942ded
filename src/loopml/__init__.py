"""loopml: the whole machine-learning loop on one machine, behind the Vertex AI and BigQuery APIs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from loopml.client import Client as Client

__all__ = ["Client", "__version__"]


def __getattr__(name: str) -> Any:
    # The client pulls in httpx; keep `import loopml` cheap for replicas and the CLI.
    if name == "Client":
        from loopml.client import Client

        return Client
    raise AttributeError(name)
