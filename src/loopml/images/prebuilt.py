"""Prebuilt Vertex AI container images mapped to local Python environments.

| Image URI (any registry host/region)                         | framework  | environment |
|---|---|---|
| `vertex-ai/training/sklearn-cpu.*`, `…/prediction/sklearn-cpu.*`, `cloud-aiplatform/…/scikit-learn-cpu.*` | sklearn | data stack |
| `…/xgboost-cpu.*`                                            | xgboost    | data stack + xgboost |
| `…/tf-cpu.*`, `…/tf2-cpu.*`                                   | tensorflow | data stack + tensorflow-cpu |
| `…/pytorch-cpu.*`, `…/pytorch-xla.*`                          | pytorch    | data stack + torch |
| `gcr.io/deeplearning-platform-release/base-cpu` etc.         | python     | data stack |
| `python:3.X[-slim…]` (Docker Hub)                             | python     | empty env on Python 3.X |

The data stack is what the Vertex images carry for these workloads: numpy, pandas, scipy,
scikit-learn, joblib, pyarrow, google-cloud-storage, google-cloud-bigquery, gcsfs. Packages the
loopml host already has are pinned to the host's versions, so a model trained in a job loads in
loopml's built-in servers (and uv's cache makes the env quick to build).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import metadata

_DATA_STACK = [
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "joblib",
    "pyarrow",
    "google-cloud-storage",
    "google-cloud-bigquery",
    "gcsfs",
    "db-dtypes",
]
_EXTRA = {
    "sklearn": [],
    "xgboost": ["xgboost"],
    "tensorflow": ["tensorflow-cpu"],
    "pytorch": ["torch"],
    "python": [],
}
_FRAMEWORKS = {
    "sklearn": "sklearn",
    "scikit-learn": "sklearn",
    "xgboost": "xgboost",
    "tf": "tensorflow",
    "tf2": "tensorflow",
    "tensorflow": "tensorflow",
    "pytorch": "pytorch",
    "base": "python",
    "r": "python",
}
_VERTEX_RE = re.compile(
    r"(?:^|/)(?:vertex-ai|cloud-aiplatform)/(?P<kind>training|prediction)/"
    r"(?P<fw>sklearn|scikit-learn|xgboost|tf2|tf|tensorflow|pytorch)-(?:cpu|gpu|xla|tpu)"
    r"(?:[.](?P<ver>[\w.-]+?))?(?::[\w.-]+)?$"
)
_DLVM_RE = re.compile(
    r"(?:^|/)deeplearning-platform-release/(?P<fw>base|sklearn|tf2|tf|pytorch|xgboost|r)-(?:cpu|gpu|cu\d+)"
    r"(?:[.][\w.-]+)?(?::[\w.-]+)?$"
)
_PYTHON_RE = re.compile(
    r"^(?:(?:docker\.io/)?(?:library/)?)python(?::(?P<ver>3(?:\.\d+){0,2})?(?:[-\w.]*)?)?$"
)


@dataclass(frozen=True)
class Prebuilt:
    uri: str
    framework: str  # sklearn | xgboost | tensorflow | pytorch | python
    kind: str  # training | prediction | base
    python: str | None  # a version request ("3.10") or None for the host's
    requirements: tuple[str, ...]


def _pinned(packages: list[str]) -> list[str]:
    out = []
    for name in packages:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def match_prebuilt(uri: str) -> Prebuilt | None:
    """The local equivalent of a prebuilt image URI, or None for any other image."""
    text = uri.strip()
    if "@" in text:
        text = text.split("@", 1)[0]
    m = _VERTEX_RE.search(text)
    if m:
        fw = _FRAMEWORKS[m.group("fw")]
        return Prebuilt(uri, fw, m.group("kind"), None, tuple(_pinned(_DATA_STACK + _EXTRA[fw])))
    m = _DLVM_RE.search(text)
    if m:
        fw = _FRAMEWORKS[m.group("fw")]
        return Prebuilt(uri, fw, "base", None, tuple(_pinned(_DATA_STACK + _EXTRA[fw])))
    m = _PYTHON_RE.match(text)
    if m:
        return Prebuilt(uri, "python", "base", m.group("ver"), ())
    return None


def python_version_of_base(image: str) -> str | None:
    """`python:3.11-slim` → "3.11"; None for `python`, `python:latest` or other images."""
    m = _PYTHON_RE.match(image.strip())
    return m.group("ver") if m else None
