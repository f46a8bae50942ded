"""Which serving runtime a model version needs, from its container spec and its artifacts.

Vertex prebuilt prediction images are referenced only by URI; loopml maps them to built-in
servers for the framework. Without an image, a `loopml_model.json` manifest in the artifacts
names the framework (SQL models write "bqml-kmeans" etc., Python predictors write "python").
Any other image URI, or a container `command`, runs as a custom container (a host process with
the Vertex serving-container contract).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from loopml.errors import InvalidArgument

MANIFEST = "loopml_model.json"

CUSTOM_CONTAINER = "custom-container"

# <region>-docker.pkg.dev/vertex-ai/prediction/<family>-<cpu|gpu>.<major>-<minor>[:tag]
# and the older gcr.io/cloud-aiplatform/prediction/... names.
PREBUILT_IMAGE_RE = re.compile(
    r"^(?:(?:[a-z0-9]+-)?docker\.pkg\.dev/vertex-ai(?:-restricted)?/prediction"
    r"|(?:[a-z]+\.)?gcr\.io/cloud-aiplatform/prediction)"
    r"/(?P<family>sklearn|xgboost|tf2|tf|pytorch)-(?P<device>cpu|gpu)\.(?P<version>[0-9]+-[0-9]+)"
    r"(?::[A-Za-z0-9._-]+)?$"
)

FAMILY_TO_FRAMEWORK = {
    "sklearn": "sklearn",
    "xgboost": "xgboost",
    "tf2": "tensorflow",
    "tf": "tensorflow",
    "pytorch": "pytorch",
}

# Documented list of prebuilt images loopml recognises (any minor version matching the pattern
# above is accepted; these are the ones the workshops use).
SUPPORTED_PREBUILT_IMAGES = [
    "us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-0",
    "us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-2",
    "us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-3",
    "us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-5",
    "us-docker.pkg.dev/vertex-ai/prediction/xgboost-cpu.1-7",
    "us-docker.pkg.dev/vertex-ai/prediction/xgboost-cpu.2-1",
    "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-9",
    "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-12",
    "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15",
    "us-docker.pkg.dev/vertex-ai/prediction/pytorch-cpu.2-1",
]

# File names that identify a framework when neither an image nor a manifest does.
_FILE_HINTS = [
    ("saved_model.pb", "tensorflow"),
    ("model.bst", "xgboost"),
    ("model.joblib", "sklearn"),
    ("model.pkl", "sklearn"),
]

# Frameworks served natively by loopml that can also use AUTOMATIC_RESOURCES.
_AUTOMATIC_OK_PREFIXES = ("bqml", "python")


def prebuilt_framework(image_uri: str) -> str | None:
    """The framework of a Vertex prebuilt prediction image URI, or None."""
    m = PREBUILT_IMAGE_RE.match(image_uri.strip())
    if not m:
        return None
    return FAMILY_TO_FRAMEWORK[m.group("family")]


def read_manifest(artifact_dir: Path | None) -> dict[str, Any] | None:
    if artifact_dir is None:
        return None
    path = artifact_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"{MANIFEST} in the model artifacts is not valid JSON: {exc}.") from exc
    if not isinstance(data, dict) or not isinstance(data.get("framework"), str) or not data["framework"]:
        raise InvalidArgument(f'{MANIFEST} must be a JSON object with a "framework" string.')
    return data


def detect_framework(container_spec: dict[str, Any] | None, artifact_dir: Path | None) -> str:
    """The serving runtime of a model version.

    Prebuilt image → its framework; a command or any other image → "custom-container"; no image →
    the `loopml_model.json` manifest, else well-known artifact file names. Raises InvalidArgument
    when nothing identifies the framework.
    """
    spec = container_spec or {}
    image = str(spec.get("imageUri") or "").strip()
    if spec.get("command"):
        return CUSTOM_CONTAINER
    if image:
        return prebuilt_framework(image) or CUSTOM_CONTAINER
    manifest = read_manifest(artifact_dir)
    if manifest is not None:
        return str(manifest["framework"])
    if artifact_dir is not None and artifact_dir.is_dir():
        for name, framework in _FILE_HINTS:
            if (artifact_dir / name).is_file():
                return framework
    raise InvalidArgument(
        "model.containerSpec.imageUri is required: use a prebuilt prediction image "
        "(e.g. us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-2), a custom container, "
        f"or artifacts with a {MANIFEST} manifest naming the framework."
    )


def supported_deployment_types(framework: str) -> list[str]:
    """`supportedDeploymentResourcesTypes` for a framework."""
    if framework.startswith(_AUTOMATIC_OK_PREFIXES):
        return ["DEDICATED_RESOURCES", "AUTOMATIC_RESOURCES"]
    return ["DEDICATED_RESOURCES"]
