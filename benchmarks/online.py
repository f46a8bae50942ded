"""Online prediction: loopml vs `mlflow models serve` vs a minimal FastAPI app.

Same model (scikit-learn DecisionTreeClassifier on 3 float features), same load generator (wrk,
one thread, on loopback), single-instance requests at concurrency 1, 8 and 32, interleaved:
every round runs each server once per concurrency, and the medians over rounds are reported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
from sklearn.tree import DecisionTreeClassifier

from benchmarks import common

MLFLOW_VENV = common.ROOT / ".venvs" / "mlflow"
CONCURRENCY = (1, 8, 32)
INSTANCE = [0.3, -1.2, 0.7]


def train(path: Path) -> None:
    rng = np.random.default_rng(7)
    X = rng.normal(size=(5000, 3))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
    joblib.dump(DecisionTreeClassifier(max_depth=8, random_state=0).fit(X, y), path)


def ensure_mlflow() -> Path:
    python = MLFLOW_VENV / "bin" / "python"
    if not (MLFLOW_VENV / "bin" / "mlflow").exists():
        subprocess.run([sys.executable, "-m", "venv", str(MLFLOW_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "mlflow>=3", "scikit-learn"], check=True)
    return MLFLOW_VENV / "bin" / "mlflow"


class Target:
    name: str
    url: str
    body: str
    proc: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        common.stop(self.proc)


def start_loopml(work: Path, model_path: Path, min_replicas: int, max_replicas: int) -> Target:
    t = Target()
    t.name = "loopml"
    port = common.free_port()
    home = work / "loopml-home"
    bucket = home / "buckets" / "bench" / "model"
    bucket.mkdir(parents=True)
    (bucket / "model.joblib").write_bytes(model_path.read_bytes())
    t.proc = common.start(
        [sys.executable, "-m", "loopml", "server", "--port", str(port)],
        env={"LOOPML_HOME": str(home), "LOOPML_LOG_LEVEL": "WARNING"},
        log=work / "loopml.log",
    )
    base = f"http://127.0.0.1:{port}"
    common.wait_http(f"{base}/healthz", proc=t.proc)
    parent = f"{base}/v1/projects/bench/locations/us-central1"
    with httpx.Client(timeout=300) as c:
        r = c.post(
            f"{parent}/models:upload",
            json={
                "modelId": "tree",
                "model": {
                    "displayName": "tree",
                    "artifactUri": "gs://bench/model",
                    "containerSpec": {
                        "imageUri": "us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-3:latest"
                    },
                },
            },
        )
        r.raise_for_status()
        r = c.post(f"{parent}/endpoints", params={"endpointId": "bench"}, json={"displayName": "bench"})
        r.raise_for_status()
        r = c.post(
            f"{parent}/endpoints/bench:deployModel",
            json={
                "deployedModel": {
                    "model": "projects/bench/locations/us-central1/models/tree",
                    "dedicatedResources": {
                        "machineSpec": {"machineType": "n1-standard-2"},
                        "minReplicaCount": min_replicas,
                        "maxReplicaCount": max_replicas,
                    },
                },
                "trafficSplit": {"0": 100},
            },
        )
        r.raise_for_status()
    t.url = f"{parent}/endpoints/bench:predict"
    t.body = json.dumps({"instances": [INSTANCE]})
    r = httpx.post(t.url, content=t.body, headers={"content-type": "application/json"})
    r.raise_for_status()
    return t


def start_fastapi(work: Path, model_path: Path) -> Target:
    t = Target()
    t.name = "fastapi-minimal"
    port = common.free_port()
    t.proc = common.start(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "benchmarks.peers.fastapi_app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env={"MODEL_PATH": str(model_path)},
        log=work / "fastapi.log",
        cwd=common.REPO,
    )
    t.url = f"http://127.0.0.1:{port}/predict"
    t.body = json.dumps({"instances": [INSTANCE]})
    common.wait_http(f"http://127.0.0.1:{port}/docs", proc=t.proc)
    return t


def start_mlflow(work: Path) -> Target:
    mlflow = ensure_mlflow()
    model_dir = work / "mlflow-model"
    subprocess.run(
        [str(mlflow.parent / "python"), str(common.ROOT / "peers" / "mlflow_model.py"), str(model_dir)],
        check=True,
    )
    t = Target()
    t.name = "mlflow"
    port = common.free_port()
    t.proc = common.start(
        [
            str(mlflow),
            "models",
            "serve",
            "-m",
            str(model_dir),
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
            "--env-manager",
            "local",
        ],
        env={"PATH": f"{mlflow.parent}:{os.environ.get('PATH', '')}"},
        log=work / "mlflow.log",
    )
    t.url = f"http://127.0.0.1:{port}/invocations"
    t.body = json.dumps({"instances": [INSTANCE]})
    common.wait_http(f"http://127.0.0.1:{port}/ping", proc=t.proc, timeout=300)
    return t


def run(quick: bool = False, with_mlflow: bool = True) -> dict[str, Any]:
    rounds, seconds = (1, 3.0) if quick else (3, 8.0)
    common.ensure_wrk()
    results: dict[str, dict[int, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="loopml-bench-") as tmp:
        work = Path(tmp)
        model_path = work / "model.joblib"
        train(model_path)
        targets: list[Target] = []
        try:
            targets.append(start_loopml(work, model_path, 1, 2))
            targets.append(start_fastapi(work, model_path))
            if with_mlflow:
                targets.append(start_mlflow(work))
            for t in targets:  # warm-up
                common.wrk(t.url, t.body, connections=8, seconds=2, workdir=work)
            for _ in range(rounds):
                for conc in CONCURRENCY:
                    for t in targets:
                        cpu0 = common.tree_cpu_seconds(t.proc.pid) if t.proc else 0.0
                        res = common.wrk(t.url, t.body, connections=conc, seconds=seconds, workdir=work)
                        cpu1 = common.tree_cpu_seconds(t.proc.pid) if t.proc else 0.0
                        results.setdefault(t.name, {}).setdefault(conc, []).append(
                            {
                                "rps": res.rps,
                                "p50_ms": res.p50_ms,
                                "p99_ms": res.p99_ms,
                                "errors": res.errors,
                                "server_cpu_ms_per_request": 1000 * (cpu1 - cpu0) / max(res.requests, 1),
                            }
                        )
        finally:
            for t in targets:
                t.stop()
    summary: dict[str, Any] = {}
    for name, by_conc in results.items():
        summary[name] = {
            str(conc): {k: common.median([r[k] for r in runs]) for k in runs[0]}
            for conc, runs in by_conc.items()
        }
    return {"rounds": rounds, "seconds_per_run": seconds, "raw": results, "median": summary}


def markdown(data: dict[str, Any]) -> str:
    med = data["median"]
    names = list(med)
    lines = [
        "| server | concurrency | requests/s | p50 ms | p99 ms | server CPU ms/request | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for conc in (str(c) for c in CONCURRENCY):
        for n in names:
            m = med[n].get(conc)
            if m:
                lines.append(
                    f"| {n} | {conc} | {m['rps']:,.0f} | {m['p50_ms']:.2f} | {m['p99_ms']:.2f} | "
                    f"{m['server_cpu_ms_per_request']:.3f} | {m['errors']:.0f} |"
                )
    ratios = []
    if "loopml" in med:
        for peer in names:
            if peer == "loopml":
                continue
            r = med["loopml"]["32"]["rps"] / med[peer]["32"]["rps"]
            ratios.append(f"- loopml / {peer} throughput at concurrency 32: **{r:.1f}×**")
    return "\n".join([*lines, "", *ratios])


if __name__ == "__main__":
    out = run()
    print(json.dumps(out["median"], indent=2))
