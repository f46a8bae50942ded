"""The serving runtime driven directly (real replica processes, real artifact store, no server)."""

from __future__ import annotations

import asyncio
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.tree import DecisionTreeClassifier

from loopml.config import Settings
from loopml.errors import FailedPrecondition, InvalidArgument, LoopmlError, NotFound
from loopml.platform import Platform
from loopml.serving.service import ServingService
from loopml.serving.spec import DeployedModelSpec, EndpointSpec

EP = "projects/p/locations/us-central1/endpoints/ep1"


@pytest.fixture()
def platform(tmp_path: Path) -> Iterator[Platform]:
    settings = Settings(home=tmp_path / "home")
    p = Platform(settings)
    p.services["serving"] = ServingService(p)
    yield p
    p.services["serving"].close()


def _train(seed: int = 0) -> tuple[DecisionTreeClassifier, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 3))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    return DecisionTreeClassifier(max_depth=4, random_state=seed).fit(x, y), x


def _snapshot(p: Platform, name: str, files: dict[str, object]) -> Path:
    d = p.artifacts.registry_dir / name
    d.mkdir(parents=True)
    for fname, obj in files.items():
        if isinstance(obj, str):
            (d / fname).write_text(obj)
        else:
            joblib.dump(obj, d / fname)
    return d


def _spec(dm: str, framework: str, artifact_dir: Path | None, **kw: object) -> DeployedModelSpec:
    return DeployedModelSpec(
        endpoint_name=EP,
        endpoint_id="ep1",
        deployed_model_id=dm,
        model_name="projects/p/locations/us-central1/models/m",
        model_version_id="1",
        model_display_name="m",
        framework=framework,
        artifact_dir=artifact_dir,
        artifact_uri="gs://b/m",
        **kw,  # type: ignore[arg-type]
    )


def test_sklearn_predict_split_and_errors(platform: Platform) -> None:
    svc: ServingService = platform.services["serving"]
    model, x = _train()
    art = _snapshot(platform, "m1", {"model.joblib": model})
    svc.deploy(_spec("111", "sklearn", art))
    assert svc.status("111")["availableReplicaCount"] == 1

    async def run() -> None:
        with pytest.raises(NotFound):
            await svc.predict(EP, [[1.0, 2.0, 3.0]])
        svc.set_endpoint(EndpointSpec(EP, "ep1", "ep", {}))
        with pytest.raises(FailedPrecondition, match="no traffic split"):
            await svc.predict(EP, [[1.0, 2.0, 3.0]])
        svc.set_endpoint(EndpointSpec(EP, "ep1", "ep", {"111": 100}))
        rows = x[:10].tolist()
        out = await svc.predict(EP, rows)
        assert out["predictions"] == model.predict(x[:10]).tolist()
        assert out["deployedModelId"] == "111"
        assert out["modelVersionId"] == "1"
        with pytest.raises(InvalidArgument, match="instance 1 has 2 features, the model expects 3"):
            await svc.predict(EP, [[1.0, 2.0, 3.0], [1.0, 2.0]])
        # concurrent requests coalesce into batches and still answer individually
        results = await asyncio.gather(*(svc.predict(EP, [r]) for r in rows * 5))
        assert [r["predictions"][0] for r in results] == model.predict(x[:10]).tolist() * 5
        await asyncio.to_thread(svc.undeploy, "111")
        assert svc.status("111")["availableReplicaCount"] == 0

    asyncio.run(run())


def test_python_predictor(platform: Platform) -> None:
    svc: ServingService = platform.services["serving"]
    code = (
        "class Doubler:\n"
        "    def load(self, artifact_dir):\n"
        "        import pathlib\n"
        "        self.k = float(pathlib.Path(artifact_dir, 'k.txt').read_text())\n"
        "    def predict(self, instances, parameters=None):\n"
        "        add = (parameters or {}).get('add', 0)\n"
        "        return [v * self.k + add for v in instances]\n"
    )
    manifest = json.dumps({"framework": "python", "predictor": "doubler:Doubler"})
    art = _snapshot(platform, "py", {"doubler.py": code, "k.txt": "2", "loopml_model.json": manifest})
    svc.deploy(_spec("222", "python", art))
    svc.set_endpoint(EndpointSpec(EP, "ep1", "ep", {"222": 100}))

    async def run() -> None:
        out = await svc.predict(EP, [1, 2.5], {"add": 1})
        assert out["predictions"] == [3.0, 6.0]
        await asyncio.to_thread(svc.undeploy, "222")

    asyncio.run(run())


def test_refuses_artifacts_outside_store(platform: Platform, tmp_path: Path) -> None:
    svc: ServingService = platform.services["serving"]
    outside = tmp_path / "outside"
    outside.mkdir()
    model, _ = _train()
    joblib.dump(model, outside / "model.joblib")
    with pytest.raises(FailedPrecondition, match="not inside the artifact store"):
        svc.deploy(_spec("333", "sklearn", outside))


def test_xgboost_booster(platform: Platform) -> None:
    import xgboost as xgb

    svc: ServingService = platform.services["serving"]
    _, x = _train()
    y = (x[:, 0] > 0).astype(int)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3}, xgb.DMatrix(x, label=y), 10)
    art = platform.artifacts.registry_dir / "xgb"
    art.mkdir(parents=True)
    with warnings.catch_warnings():  # xgboost warns that .bst is saved as UBJSON
        warnings.simplefilter("ignore")
        booster.save_model(str(art / "model.bst"))
    expected = booster.predict(xgb.DMatrix(x[:7])).tolist()

    async def run() -> None:
        await asyncio.to_thread(svc.deploy, _spec("444", "xgboost", art))
        svc.set_endpoint(EndpointSpec(EP, "ep1", "ep", {"444": 100}))
        out = await svc.predict(EP, x[:7].tolist())
        assert out["predictions"] == pytest.approx(expected, rel=1e-6)
        with pytest.raises(InvalidArgument, match="instance 0 has 4 features, the model expects 3"):
            await svc.predict(EP, [[1.0, 2.0, 3.0, 4.0]])
        await asyncio.to_thread(svc.undeploy, "444")

    asyncio.run(run())


def test_unimportable_loader_runs_in_process(platform: Platform) -> None:
    from loopml.serving import loaders

    class Const:
        def predict(self, instances: list[object], parameters: object = None) -> list[object]:
            return ["const"] * len(instances)

    loaders.register_loader("test-const", lambda artifact_dir, spec: Const())
    assert loaders.factory_ref("test-const") is None
    assert loaders.factory_ref("sklearn") == "loopml.serving.loaders:load_sklearn"
    svc: ServingService = platform.services["serving"]
    art = platform.artifacts.registry_dir / "const"
    art.mkdir(parents=True)

    async def run() -> None:
        await asyncio.to_thread(svc.deploy, _spec("555", "test-const", art))
        svc.set_endpoint(EndpointSpec(EP, "ep1", "ep", {"555": 100}))
        assert (await svc.predict(EP, [1, 2]))["predictions"] == ["const", "const"]
        assert svc.status("555")["replicas"][0]["kind"] == "in-process"
        await asyncio.to_thread(svc.undeploy, "555")

    asyncio.run(run())


def test_unknown_framework_and_failed_load(platform: Platform) -> None:
    svc: ServingService = platform.services["serving"]
    art = _snapshot(platform, "broken", {"model.joblib": "not a pickle"})
    with pytest.raises(FailedPrecondition, match="No model server for framework 'tf9'"):
        svc.deploy(_spec("666", "tf9", art))
    with pytest.raises(FailedPrecondition, match="exited while loading the model"):
        svc.deploy(_spec("777", "sklearn", art))
    assert svc.status("777")["availableReplicaCount"] == 0


def test_undeploy_drains_in_flight_requests(platform: Platform) -> None:
    svc: ServingService = platform.services["serving"]
    code = (
        "import time\n"
        "class Slow:\n"
        "    def predict(self, instances):\n"
        "        time.sleep(0.3)\n"
        "        return [len(instances)]\n"
    )
    manifest = json.dumps({"framework": "python", "predictor": "slow:Slow"})
    art = _snapshot(platform, "slow", {"slow.py": code, "loopml_model.json": manifest})

    async def run() -> None:
        await asyncio.to_thread(svc.deploy, _spec("888", "python", art))
        svc.set_endpoint(EndpointSpec(EP, "ep1", "ep", {"888": 100}))
        calls = [asyncio.ensure_future(svc.predict(EP, [i])) for i in range(4)]
        await asyncio.sleep(0.1)  # all four are queued or in flight
        await asyncio.to_thread(svc.undeploy, "888")
        results = await asyncio.gather(*calls)
        assert [r["predictions"] for r in results] == [[1]] * 4
        assert svc.status("888")["availableReplicaCount"] == 0
        with pytest.raises(LoopmlError):
            await svc.predict(EP, [1])

    asyncio.run(run())


def test_python_predictor_requirements_get_their_own_env(platform: Platform) -> None:
    svc: ServingService = platform.services["serving"]
    code = (
        "import sys, numpy\n"
        "class WhereAmI:\n"
        "    def predict(self, instances):\n"
        "        return [sys.prefix for _ in instances]\n"
    )
    manifest = json.dumps(
        {"framework": "python", "predictor": "where:WhereAmI", "requirements": ["numpy>=1.20"]}
    )
    art = _snapshot(platform, "where", {"where.py": code, "loopml_model.json": manifest})

    async def run() -> None:
        await asyncio.to_thread(svc.deploy, _spec("999", "python", art))
        svc.set_endpoint(EndpointSpec(EP, "ep1", "ep", {"999": 100}))
        prefix = (await svc.predict(EP, [1]))["predictions"][0]
        assert Path(prefix).parent == platform.settings.resolved_home() / "envs" / "predictors"
        await asyncio.to_thread(svc.undeploy, "999")

    asyncio.run(run())
