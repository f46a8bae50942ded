"""Isolated Python environments built from requirements, cached by hash (`EnvManager`)."""

from loopml.envs.gcs import GcsView
from loopml.envs.manager import EnvBuildError, EnvManager
from loopml.envs.spec import EnvSpec, build_spec, normalise_requirement

__all__ = ["EnvBuildError", "EnvManager", "EnvSpec", "GcsView", "build_spec", "normalise_requirement"]
