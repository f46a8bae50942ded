"""Start-up cost of a custom-container model: deploy request → first served prediction.

The model is the W1 FastAPI predictor (`examples/hack_your_pipe_custom/predictor`, built with
`loopml images build`) serving a DecisionTreeClassifier loaded from the store through
google-cloud-storage. Three measurements, each from a cold process:

- **bare process** (the floor, our "peer"): start `uvicorn main:app` directly in the image's
  environment and poll its predict route until the first 200;
- **loopml, cached env**: `POST …:deployModel` on a running server, then poll the endpoint's
  `:predict` until the first 200 (the image's environment already exists);
- **loopml, fresh env**: the same after deleting the image's environment, so the deploy rebuilds it
  (from uv's package cache; no network download when the cache is warm).

After one untimed warm-up deploy, bare and cached runs alternate. Reported: the median of
`repeats` runs of each, and loopml/bare ratios.
Usage: `python -m benchmarks.run --only startup` (or `python -m benchmarks.startup [--quick]`).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks import common
from loopml.training.contract import emulator_env

P, L = "bench", "us-central1"
IMAGE = "bench/predictor:1"
BUCKET = "bench-startup"
INSTANCES = {"instances": [{"tax": 4.9, "shipping": 5.99, "value": 35.43}]}


def _cli(home: Path, url: str, *args: str) -> str:
    env = dict(os.environ, LOOPML_HOME=str(home), LOOPML_URL=url)
    out = subprocess.run(
        [sys.executable, "-m", "loopml", *args], env=env, capture_output=True, text=True, timeout=1800
    )
    if out.returncode != 0:
        raise RuntimeError(f"loopml {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def _write_model(home: Path) -> None:
    import joblib
    import numpy as np
    import pandas as pd
    from sklearn.tree import DecisionTreeClassifier

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"tax": 4.9, "shipping": 5.99, "value": rng.choice([35.43, 1000000.1], size=500)})
    model = DecisionTreeClassifier().fit(frame, frame["value"] > 1000)
    target = home / "buckets" / BUCKET / "model" / "model_dir" / "model.joblib"
    target.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    joblib.dump(model, buf)
    target.write_bytes(buf.getvalue())


def _lro(http: httpx.Client, op: dict[str, Any], timeout: float = 1800.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not op.get("done"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"operation {op.get('name')} not done")
        time.sleep(0.05)
        op = http.get(f"/v1/{op['name']}").json()
    if "error" in op:
        raise RuntimeError(f"operation failed: {op['error']}")
    return op["response"]


def _first_prediction(http: httpx.Client, url: str, deadline_s: float = 1800.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if http.post(url, json=INSTANCES).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"no prediction from {url}")


def _deploy_to_first_prediction(http: httpx.Client, endpoint: str, model: str) -> tuple[float, str]:
    body = {
        "deployedModel": {
            "model": model,
            "dedicatedResources": {
                "machineSpec": {"machineType": "n1-standard-2"},
                "minReplicaCount": 1,
                "maxReplicaCount": 1,
            },
        },
        "trafficSplit": {"0": 100},
    }
    t0 = time.perf_counter()
    response = _lro(http, http.post(f"/v1/{endpoint}:deployModel", json=body).json())
    _first_prediction(http, f"/v1/{endpoint}:predict")
    elapsed = time.perf_counter() - t0
    return elapsed, str(response["deployedModel"]["id"])


def _undeploy(http: httpx.Client, endpoint: str, deployed_id: str) -> None:
    _lro(http, http.post(f"/v1/{endpoint}:undeployModel", json={"deployedModelId": deployed_id}).json())


def _bare(home: Path, url: str, runtime: dict[str, Any]) -> float:
    port = common.free_port()
    # the same client environment loopml gives a replica (storage emulator and the GCE metadata
    # emulation that hands google-auth a token at once); without it google-auth spends seconds
    # probing for a metadata server and the floor would not be a floor
    env = {
        **runtime.get("env", {}),
        **emulator_env(url, P),
        "AIP_HTTP_PORT": str(port),
        "AIP_STORAGE_URI": f"gs://{BUCKET}/model",
        "AIP_PREDICT_ROUTE": "/predict",
        "UVICORN_HOST": "127.0.0.1",
        "PATH": f"{Path(runtime['python']).parent}:{os.environ.get('PATH', '')}",
    }
    t0 = time.perf_counter()
    proc = common.start(
        [runtime["python"], "-m", "uvicorn", "main:app", "--port", str(port)],
        env=env,
        log=home / "bare.log",
        cwd=Path(runtime["workdir"]),
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            _first_prediction(http, "/predict", 300)
        return time.perf_counter() - t0
    finally:
        common.stop(proc)


def run(quick: bool = False, repeats: int | None = None) -> dict[str, Any]:
    repeats = repeats or (1 if quick else 3)
    work = Path(tempfile.mkdtemp(prefix="loopml-bench-startup-"))
    home = work / "home"
    port = common.free_port()
    url = f"http://127.0.0.1:{port}"
    server = common.start(
        [sys.executable, "-m", "loopml", "server"],
        env={"LOOPML_HOME": str(home), "LOOPML_PORT": str(port), "NO_GCE_CHECK": "true"},
        log=work / "server.log",
    )
    try:
        common.wait_http(f"{url}/healthz", 120, server)
        t_build = time.perf_counter()
        _cli(
            home,
            url,
            "images",
            "build",
            str(common.REPO / "examples/hack_your_pipe_custom/predictor"),
            "--tag",
            IMAGE,
        )
        build_s = time.perf_counter() - t_build
        runtime = json.loads(_cli(home, url, "images", "resolve", IMAGE, "--json"))
        env_dir = Path(runtime["python"]).parent.parent
        _write_model(home)
        with httpx.Client(base_url=url, timeout=httpx.Timeout(60.0, read=1800.0)) as http:
            model = {
                "displayName": "startup-bench",
                "artifactUri": f"gs://{BUCKET}/model",
                "containerSpec": {
                    "imageUri": IMAGE,
                    "predictRoute": "/predict",
                    "healthRoute": "/health_check",
                    "env": [{"name": "UVICORN_HOST", "value": "127.0.0.1"}],
                },
            }
            uploaded = _lro(
                http, http.post(f"/v1/projects/{P}/locations/{L}/models:upload", json={"model": model}).json()
            )
            endpoint = _lro(
                http,
                http.post(
                    f"/v1/projects/{P}/locations/{L}/endpoints", json={"displayName": "startup"}
                ).json(),
            )
            model_name, endpoint_name = uploaded["model"], endpoint["name"]

            # one untimed deploy first: the first start of a new env pays one-off costs (cold files,
            # first use of the server's storage and metadata routes) that no later start pays
            _, deployed = _deploy_to_first_prediction(http, endpoint_name, model_name)
            _undeploy(http, endpoint_name, deployed)
            bare, cached = [], []
            for _ in range(repeats):  # interleaved: the same machine state for both
                bare.append(_bare(home, url, runtime))
                seconds, deployed = _deploy_to_first_prediction(http, endpoint_name, model_name)
                cached.append(seconds)
                _undeploy(http, endpoint_name, deployed)
            fresh = []
            for _ in range(repeats):
                shutil.rmtree(env_dir, ignore_errors=True)  # the next resolve rebuilds it
                seconds, deployed = _deploy_to_first_prediction(http, endpoint_name, model_name)
                fresh.append(seconds)
                _undeploy(http, endpoint_name, deployed)
    finally:
        common.stop(server)
        shutil.rmtree(work, ignore_errors=True)
    median = {
        "bare_process_s": round(statistics.median(bare), 3),
        "loopml_cached_env_s": round(statistics.median(cached), 3),
        "loopml_fresh_env_s": round(statistics.median(fresh), 3),
    }
    median["cached_over_bare"] = round(median["loopml_cached_env_s"] / median["bare_process_s"], 2)
    median["fresh_over_bare"] = round(median["loopml_fresh_env_s"] / median["bare_process_s"], 2)
    return {
        "name": "startup_custom_container",
        "repeats": repeats,
        "image_build_s": round(build_s, 3),
        "runs": {"bare_process_s": bare, "loopml_cached_env_s": cached, "loopml_fresh_env_s": fresh},
        "median": median,
    }


def markdown(data: dict[str, Any]) -> str:
    m = data["median"]
    return (
        "Custom-container start-up: deploy request → first served prediction (W1 FastAPI predictor, "
        f"median of {data['repeats']} run(s); image build {data['image_build_s']:.1f} s, once).\n\n"
        "| | seconds | × bare process |\n|---|---:|---:|\n"
        f"| bare `uvicorn` process in the image env (floor) | {m['bare_process_s']:.2f} | 1.00 |\n"
        f"| loopml deployModel, cached env | {m['loopml_cached_env_s']:.2f} | {m['cached_over_bare']:.2f} |\n"
        f"| loopml deployModel, fresh env (rebuilt from uv cache) | {m['loopml_fresh_env_s']:.2f} | "
        f"{m['fresh_over_bare']:.2f} |\n"
    )


if __name__ == "__main__":
    result = run(quick="--quick" in sys.argv)
    print(json.dumps(result, indent=2))
    print(markdown(result))
