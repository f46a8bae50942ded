"""The replica-side batch handler: per-request validation, one predict call per batch, split back."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from sklearn.tree import DecisionTreeClassifier

from loopml.serving.handler import BatchHandler
from loopml.serving.loaders import SklearnPredictor
from loopml.serving.protocol import KIND_EXPLAIN, KIND_PREDICT, KIND_RAW

META = {
    "deployedModelId": "9",
    "model": "projects/p/locations/l/models/m",
    "modelVersionId": "2",
    "modelDisplayName": "m",
}


class Counting(SklearnPredictor):
    calls = 0

    def predict(self, instances: list[Any], parameters: dict[str, Any] | None = None) -> list[Any]:
        Counting.calls += 1
        return super().predict(instances, parameters)


def _handler() -> tuple[BatchHandler, DecisionTreeClassifier, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 3))
    model = DecisionTreeClassifier(max_depth=3).fit(x, (x[:, 0] > 0).astype(int))
    return BatchHandler(Counting(model), META), model, x


def test_batch_is_one_predict_call_and_errors_stay_per_request() -> None:
    handler, model, x = _handler()
    Counting.calls = 0
    good = [orjson.dumps({"instances": x[i : i + 2].tolist()}) for i in range(0, 6, 2)]
    bad = orjson.dumps({"instances": [[1.0, 2.0, 3.0], [1.0]]})
    out = handler.handle(
        [(KIND_PREDICT, good[0]), (KIND_PREDICT, bad), (KIND_RAW, good[1]), (KIND_PREDICT, good[2])]
    )
    assert Counting.calls == 1
    assert [status for status, _ in out] == [200, 400, 200, 200]
    first = orjson.loads(out[0][1])
    assert first == {"predictions": model.predict(x[0:2]).tolist(), **META}
    assert orjson.loads(out[2][1]) == {
        "predictions": model.predict(x[2:4]).tolist()
    }  # raw: the server's body
    assert orjson.loads(out[1][1])["error"]["message"] == "instance 1 has 1 features, the model expects 3."


def test_bad_values_fall_back_to_per_request_calls() -> None:
    handler, model, x = _handler()
    items = [
        (KIND_PREDICT, orjson.dumps({"instances": x[:1].tolist()})),
        (KIND_PREDICT, orjson.dumps({"instances": [["a", "b", "c"]]})),
    ]
    out = handler.handle(items)
    assert out[0][0] == 200 and orjson.loads(out[0][1])["predictions"] == model.predict(x[:1]).tolist()
    assert out[1][0] == 400 and "instance 0: value 0 is 'a'" in orjson.loads(out[1][1])["error"]["message"]


def test_malformed_bodies_and_explain() -> None:
    handler, _, _ = _handler()
    out = handler.handle(
        [
            (KIND_PREDICT, b"{"),
            (KIND_PREDICT, b'{"instances": 3}'),
            (KIND_PREDICT, b"[]"),
            (KIND_EXPLAIN, b'{"instances": [[1, 2, 3]]}'),
        ]
    )
    assert [s for s, _ in out] == [400, 400, 400, 400]
    assert orjson.loads(out[3][1])["error"]["status"] == "FAILED_PRECONDITION"
    assert orjson.loads(out[0][1])["error"]["message"].startswith("Malformed JSON")


def test_port_rewrite_for_hard_coded_servers() -> None:
    from loopml.serving.containers import rewrite_port

    assert (
        rewrite_port(["uvicorn", "main:app", "--host", "0.0.0.0", "--port", "8080"], 8080, 9001)[-1] == "9001"
    )
    assert rewrite_port(["gunicorn", "-b", "0.0.0.0:8080", "app:app"], 8080, 9001)[2] == "0.0.0.0:9001"
    assert rewrite_port(["gunicorn", "--bind=:8080", "app:app"], 8080, 9001)[1] == "--bind=:9001"
    shell = rewrite_port(["/bin/sh", "-c", "exec uvicorn main:app --port 8080 --workers 1"], 8080, 9001)
    assert shell[2] == "exec uvicorn main:app --port 9001 --workers 1"
    assert rewrite_port(["python", "serve.py", "8080"], 8080, 9001) == ["python", "serve.py", "8080"]
    assert rewrite_port(["x", "--port", "8080"], 8080, 8080) == ["x", "--port", "8080"]


def test_a_bad_value_is_a_400_naming_the_instance_and_value() -> None:
    handler, model, x = _handler()
    good = [[float(v) for v in x[0]], [float(v) for v in x[1]]]
    good_body = (KIND_PREDICT, orjson.dumps({"instances": good}))
    cases = [
        ([good[0], [1.0, "x", 3.0]], "instance 1: value 1 is 'x' (str); the model expects 3 numbers"),
        ([[1.0, 2.0, [3.0]]], "instance 0: value 2 is [3.0] (list)"),
        ([good[1], good[0], [{"a": 1}, 2.0, 3.0]], "instance 2: value 0 is {'a': 1} (dict)"),
    ]
    expected = model.predict(np.array(good)).tolist()

    def check_bad(result: tuple[int, bytes], message: str) -> None:
        error = orjson.loads(result[1])["error"]
        assert result[0] == 400 and error["status"] == "INVALID_ARGUMENT", error
        assert error["message"].startswith(message), error

    for instances, message in cases:  # one request at a time
        check_bad(handler.handle([(KIND_PREDICT, orjson.dumps({"instances": instances}))])[0], message)
    # all in one micro-batch with a good request: only the bad requests fail, each with its own error
    results = handler.handle([*((KIND_PREDICT, orjson.dumps({"instances": i})) for i, _ in cases), good_body])
    for result, (_, message) in zip(results[:-1], cases, strict=True):
        check_bad(result, message)
    assert results[-1][0] == 200 and orjson.loads(results[-1][1])["predictions"] == expected
