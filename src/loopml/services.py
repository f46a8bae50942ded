"""Wires the services onto a Platform. Each subsystem adds its construction here, in dependency order.

Services are reached as typed attributes through `loopml.services.get(platform, Type)` or
directly from `platform.services[name]`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from loopml.platform import Platform

T = TypeVar("T")


def get(platform: Platform, name: str, kind: type[T]) -> T:
    service: Any = platform.services.get(name)
    if service is None:
        raise RuntimeError(f"service {name!r} is not configured on this platform")
    assert isinstance(service, kind), f"service {name!r} is {type(service)!r}, not {kind!r}"
    return service


def build(platform: Platform) -> None:
    """Construct every service. Keep one block per subsystem, in dependency order."""
    # -- registry (models, versions, aliases, endpoints' stored state) ---------------------
    # -- ingest / warehouse / sqlml ---------------------------------------------------------
    # -- envs / images / training -----------------------------------------------------------
    # training (JOBS): after envs/images, before serving; looks images/envs/registry up lazily
    from loopml import training

    platform.services["training"] = training.build(platform)
    # -- serving ----------------------------------------------------------------------------
    return None
