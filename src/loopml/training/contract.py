"""The Vertex training environment contract, plus what makes Google's clients reach loopml.

A job sees `AIP_MODEL_DIR`, `AIP_CHECKPOINT_DIR`, `AIP_TENSORBOARD_LOG_DIR` (gs:// URIs into the
store) when it has a base output directory, `AIP_DATA_FORMAT` and `AIP_*_DATA_URI` when data is
given, `CLOUD_ML_*` identifiers, and the emulator variables (`STORAGE_EMULATOR_HOST`,
`BIGQUERY_EMULATOR_HOST`, `GCE_METADATA_HOST`/`GCE_METADATA_IP`) that point unchanged
`google-cloud-storage`, `google-cloud-bigquery`, gcsfs and `google.auth.default()` at this
server. `NO_GCE_CHECK` is deliberately *not* set: it would stop google-auth from asking the
(emulated) metadata server for credentials.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

from loopml.errors import InvalidArgument

# Variables a job inherits from the server's environment (nothing else leaks in).
_INHERITED = (
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "TZ",
    "USER",
    "LOGNAME",
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
)
# Variables that would redirect or disable the emulation inside a job; never inherited.
_DROPPED = {"NO_GCE_CHECK", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_UNIVERSE_DOMAIN"}


def server_url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "", "::"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def emulator_env(url: str, project: str, location: str | None = None) -> dict[str, str]:
    """What makes unchanged Google clients in a child process (job or replica) reach this server.

    `google-cloud-storage`/gcsfs follow `STORAGE_EMULATOR_HOST`, `google-cloud-bigquery` follows
    `BIGQUERY_EMULATOR_HOST`, and `google.auth.default()` gets a project and a token from the
    GCE metadata emulation (`GCE_METADATA_HOST`/`GCE_METADATA_IP`; see `loopml.api.jobs`).
    Leave `NO_GCE_CHECK` unset in such processes: it disables that metadata path.
    """
    host = urlparse(url).netloc
    env = {
        "GOOGLE_CLOUD_PROJECT": project,
        "STORAGE_EMULATOR_HOST": url,
        "BIGQUERY_EMULATOR_HOST": url,
        "GCE_METADATA_HOST": host,
        "GCE_METADATA_IP": host,
        "LOOPML_URL": url,
    }
    if location:
        env["GOOGLE_CLOUD_REGION"] = location
    return env


def data_env(input_data_config: dict[str, Any] | None) -> dict[str, str]:
    """`AIP_DATA_FORMAT` and `AIP_*_DATA_URI` from the loopml extensions of an inputDataConfig.

    The extensions are `warehouseTable` ("bq://p.d.t" or {"training", "validation", "test"}) and
    `dataUris` ({"format": "csv"|"jsonl", "training", "validation", "test"}). A managed dataset
    (`datasetId`) gives its variables when the job starts (`loopml.datasets`), so here it gives
    none; it cannot be combined with the extensions.
    """
    if not input_data_config:
        return {}
    if not isinstance(input_data_config, dict):
        raise InvalidArgument("inputDataConfig must be an object.")
    table = input_data_config.get("warehouseTable")
    uris = input_data_config.get("dataUris")
    if input_data_config.get("datasetId"):
        if table or uris:
            raise InvalidArgument(
                "inputDataConfig has a datasetId and also warehouseTable/dataUris; give only one "
                "source of training data."
            )
        return {}
    env: dict[str, str] = {}
    if table:
        parts = {"training": table} if isinstance(table, str) else table
        if not isinstance(parts, dict) or not isinstance(parts.get("training"), str):
            raise InvalidArgument("inputDataConfig.warehouseTable must be 'bq://p.d.t' or {training, ...}.")
        env["AIP_DATA_FORMAT"] = "bigquery"
        for split in ("training", "validation", "test"):
            value = parts.get(split)
            if value:
                ref = str(value).removeprefix("bq://")
                if ref.count(".") != 2:
                    raise InvalidArgument(
                        f"warehouseTable.{split} must be project.dataset.table, got {value!r}."
                    )
                env[f"AIP_{split.upper()}_DATA_URI"] = f"bq://{ref}"
    elif uris:
        if not isinstance(uris, dict) or uris.get("format") not in ("csv", "jsonl"):
            raise InvalidArgument(
                "inputDataConfig.dataUris needs format 'csv' or 'jsonl' and a training URI."
            )
        if not isinstance(uris.get("training"), str) or not uris["training"].startswith(("gs://", "s3://")):
            raise InvalidArgument("inputDataConfig.dataUris.training must be a gs:// URI.")
        env["AIP_DATA_FORMAT"] = uris["format"]
        for split in ("training", "validation", "test"):
            if isinstance(uris.get(split), str):
                env[f"AIP_{split.upper()}_DATA_URI"] = uris[split]
    return env


def job_env(
    *,
    base_env: dict[str, str],
    bin_dirs: list[str],
    image_env: dict[str, str],
    user_env: dict[str, str],
    project: str,
    location: str,
    job_id: str,
    base_output_dir: str | None,
    data: dict[str, str],
    url: str,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The complete environment of a job process, in precedence order (later wins)."""
    env = {k: base_env[k] for k in _INHERITED if k in base_env}
    env["PATH"] = os.pathsep.join([*bin_dirs, base_env.get("PATH", "/usr/local/bin:/usr/bin:/bin")])
    env.update({k: v for k, v in image_env.items() if k not in _DROPPED})
    env.update(extra or {})
    env.update(user_env)
    env.update(emulator_env(url, project, location))
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "CLOUD_ML_JOB_ID": job_id,
            "CLOUD_ML_PROJECT_ID": project,
            "CLOUD_ML_REGION": location,
        }
    )
    if base_output_dir:
        env["AIP_MODEL_DIR"] = f"{base_output_dir}/model/"
        env["AIP_CHECKPOINT_DIR"] = f"{base_output_dir}/checkpoints/"
        env["AIP_TENSORBOARD_LOG_DIR"] = f"{base_output_dir}/logs/"
    env.update(data)
    for key in _DROPPED:
        env.pop(key, None)
    return env
