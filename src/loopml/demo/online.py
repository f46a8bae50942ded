"""Demo step 1: a scikit-learn model uploaded, registered, deployed and served."""

from __future__ import annotations

import csv
import io
import time
from importlib import resources

from rich.console import Console

from loopml.demo.common import BUCKET, LOCATION, PROJECT, SKLEARN_IMAGE, Api, DemoFailed, Summary


# -- step 1: a scikit-learn model, online -------------------------------------------------------
def wine_data() -> tuple[list[str], list[list[float]], list[int]]:
    text = resources.files("loopml.demo").joinpath("data/winequality-red.csv").read_text()
    reader = csv.reader(io.StringIO(text), delimiter=";")
    header = next(reader)
    rows = [[float(v) for v in r] for r in reader if r]
    return header[:-1], [r[:-1] for r in rows], [int(r[-1] >= 6) for r in rows]


def online_prediction(api: Api, console: Console, summary: Summary) -> None:
    import joblib
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    console.rule("[bold]1 · a scikit-learn model, registered, deployed and served")
    _columns, x, y = wine_data()
    x_train, x_test, y_train, y_test = train_test_split(
        np.array(x), np.array(y), test_size=0.2, random_state=7, stratify=y
    )
    model = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=7, n_jobs=1)
    model.fit(x_train, y_train)
    accuracy = float((model.predict(x_test) == y_test).mean())
    console.print(
        f"trained a random forest on {len(x_train)} red wines (good = quality ≥ 6): test accuracy {accuracy:.3f}"
    )

    buf = io.BytesIO()
    joblib.dump(model, buf)
    api.call("POST", "/storage/v1/b", params={"project": PROJECT}, json={"name": BUCKET})
    api.call(
        "POST",
        f"/upload/storage/v1/b/{BUCKET}/o",
        params={"uploadType": "media", "name": "wine/1/model.joblib"},
        content=buf.getvalue(),
        headers={"content-type": "application/octet-stream"},
    )
    console.print(f"uploaded gs://{BUCKET}/wine/1/model.joblib over the Cloud Storage API")

    parent = f"projects/{PROJECT}/locations/{LOCATION}"
    uploaded = api.operation(
        "POST",
        f"/v1/{parent}/models:upload",
        json={
            "modelId": "wine-quality",
            "model": {
                "displayName": "wine-quality",
                "description": "Random forest of good (quality >= 6) red wines, UCI Wine Quality (CC BY 4.0)",
                "artifactUri": f"gs://{BUCKET}/wine/1/",
                "containerSpec": {"imageUri": SKLEARN_IMAGE},
                "labels": {"source": "loopml-demo"},
            },
        },
    )
    console.print(f"registered {uploaded['model']} version {uploaded['modelVersionId']}")
    endpoint, deployed_id = api.endpoint_with("wine-endpoint", uploaded["model"], max_replicas=2)
    console.print(f"deployed to {endpoint} as deployed model {deployed_id}")

    sample = x_test[:8].tolist()
    out = api.call("POST", f"/v1/{endpoint}:predict", json={"instances": sample})
    served = [int(p) for p in out["predictions"]]
    local = [int(p) for p in model.predict(np.array(sample))]
    if served != local:
        raise DemoFailed(f"served predictions {served} differ from the model's own {local}")
    console.print(f"predicted 8 wines over HTTP: {served} (identical to the model in this process)")
    n, rows = 300, x_test[:300].tolist()
    start = time.perf_counter()
    for row in rows:
        model.predict(np.array([row]))
    own = (time.perf_counter() - start) / n * 1000
    start = time.perf_counter()
    for row in rows:
        api.call("POST", f"/v1/{endpoint}:predict", json={"instances": [row]})
    per = (time.perf_counter() - start) / n * 1000
    console.print(
        f"{n} single-instance requests, one after another: {per:.2f} ms each "
        f"(the forest itself takes {own:.2f} ms per row in this process)"
    )
    summary.add("wine model", f"{uploaded['model']} on {endpoint}")
    summary.add("wine test accuracy", f"{accuracy:.3f}")
    summary.add("online round trip (sequential)", f"{per:.2f} ms/request, model {own:.2f} ms")
