"""BigQuery v2 `Model` resources for SQL models (`models.get` / `models.list` of the BigQuery REST API).

Shapes follow the BigQuery REST reference closely enough for `google-cloud-bigquery`'s
`client.get_model()` / `client.list_models()`: modelReference, modelType, featureColumns,
labelColumns, trainingRuns (options, per-iteration results, evaluation metrics, the Vertex AI
model id and version when registered), creationTime / lastModifiedTime in epoch milliseconds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from loopml.refs import rfc3339
from loopml.sqlml.catalog import Entry
from loopml.sqlml.model import SqlModel

_OPTION_NAMES = {
    "NUM_CLUSTERS": "numClusters",
    "KMEANS_INIT_METHOD": "kmeansInitializationMethod",
    "KMEANS_INIT_COL": "kmeansInitializationColumn",
    "DISTANCE_TYPE": "distanceType",
    "STANDARDIZE_FEATURES": "standardizeFeatures",
    "MAX_ITERATIONS": "maxIterations",
    "EARLY_STOP": "earlyStop",
    "MIN_REL_PROGRESS": "minRelativeProgress",
    "WARM_START": "warmStart",
    "INPUT_LABEL_COLS": "inputLabelColumns",
    "DATA_SPLIT_METHOD": "dataSplitMethod",
    "DATA_SPLIT_EVAL_FRACTION": "dataSplitEvalFraction",
    "L1_REG": "l1Regularization",
    "L2_REG": "l2Regularization",
    "LEARN_RATE": "learnRate",
    "MAX_TREE_DEPTH": "maxTreeDepth",
    "SUBSAMPLE": "subsample",
    "MIN_SPLIT_LOSS": "minSplitLoss",
    "MIN_TREE_CHILD_WEIGHT": "minTreeChildWeight",
    "NUM_PARALLEL_TREE": "numParallelTree",
    "AUTO_CLASS_WEIGHTS": "autoClassWeights",
    "MODEL_REGISTRY": "modelRegistry",
    "VERTEX_AI_MODEL_VERSION_ALIASES": "vertexAiModelVersionAliases",
}
_REGRESSION = {
    "mean_absolute_error": "meanAbsoluteError",
    "mean_squared_error": "meanSquaredError",
    "mean_squared_log_error": "meanSquaredLogError",
    "median_absolute_error": "medianAbsoluteError",
    "r2_score": "rSquared",
    "explained_variance": "explainedVariance",
}
_CLASSIFICATION = {
    "precision": "precision",
    "recall": "recall",
    "accuracy": "accuracy",
    "f1_score": "f1Score",
    "log_loss": "logLoss",
    "roc_auc": "rocAuc",
}


def _type(kind: str) -> dict[str, Any]:
    return {"typeKind": {"BOOL": "BOOL", "INT64": "INT64", "FLOAT64": "FLOAT64"}.get(kind, kind)}


def _label_columns(model: SqlModel) -> list[dict[str, Any]]:
    if model.kmeans is not None:
        pair = {
            "typeKind": "STRUCT",
            "structType": {
                "fields": [
                    {"name": "CENTROID_ID", "type": _type("INT64")},
                    {"name": "DISTANCE", "type": _type("FLOAT64")},
                ]
            },
        }
        return [
            {"name": "CENTROID_ID", "type": _type("INT64")},
            {"name": "NEAREST_CENTROIDS_DISTANCE", "type": {"typeKind": "ARRAY", "arrayElementType": pair}},
        ]
    sup = model.supervised
    assert sup is not None
    if not sup.classes:
        return [{"name": f"predicted_{sup.label}", "type": _type("FLOAT64")}]
    pair = {
        "typeKind": "STRUCT",
        "structType": {
            "fields": [
                {"name": "label", "type": _type(sup.label_type)},
                {"name": "prob", "type": _type("FLOAT64")},
            ]
        },
    }
    return [
        {"name": f"predicted_{sup.label}", "type": _type(sup.label_type)},
        {"name": f"predicted_{sup.label}_probs", "type": {"typeKind": "ARRAY", "arrayElementType": pair}},
    ]


def _metrics(model: SqlModel) -> dict[str, Any]:
    if model.kmeans is not None:
        p = model.kmeans
        units = model.encoder.unstandardize(p.centroids)
        clusters = []
        for i in range(p.k):
            values = [
                {"featureColumn": f.name, "numericalValue": float(units[i, sl][0])}
                for f, sl in model.encoder.dimension_slices()
                if f.kind != "categorical"
            ]
            clusters.append(
                {"centroidId": str(i + 1), "count": str(int(p.sizes[i])), "featureValues": values}
            )
        return {
            "clusteringMetrics": {
                "daviesBouldinIndex": p.davies_bouldin_index,
                "meanSquaredDistance": p.mean_squared_distance,
                "clusters": clusters,
            }
        }
    sup = model.supervised
    assert sup is not None
    m = sup.eval_metrics
    if not sup.classes:
        return {"regressionMetrics": {v: m[k] for k, v in _REGRESSION.items() if m.get(k) is not None}}
    agg = {
        "aggregateClassificationMetrics": {
            v: m[k] for k, v in _CLASSIFICATION.items() if m.get(k) is not None
        }
    }
    key = "binaryClassificationMetrics" if len(sup.classes) == 2 else "multiClassClassificationMetrics"
    return {key: agg}


def etag(entry: Entry) -> str:
    """Changes with the model (CREATE OR REPLACE) and with every metadata change."""
    generation = str(entry.record.get("generation", ""))
    revision = int(entry.record.get("revision") or 0)
    return f"{generation}.{revision}" if revision else generation


def model_resource(entry: Entry, model: SqlModel, location: str) -> dict[str, Any]:
    path = entry.path
    created_ms = int(entry.record.get("created_ms") or model.info.get("created_ms") or 0)
    iterations = (
        model.kmeans.iterations
        if model.kmeans is not None
        else (model.supervised.iterations if model.supervised else [])
    )
    options: dict[str, Any] = {}
    for name, value in model.options.items():
        key = _OPTION_NAMES.get(name)
        if key is not None and value not in (None, []):
            # the REST enum spells the SQL option value KMEANS++ as KMEANS_PLUS_PLUS
            options[key] = "KMEANS_PLUS_PLUS" if value == "KMEANS++" else value
    run: dict[str, Any] = {
        "startTime": rfc3339(datetime.fromtimestamp(created_ms / 1000, UTC)),
        "trainingOptions": options,
        "results": [
            {
                k: v
                for k, v in {
                    "index": r["iteration"],
                    "loss": r.get("loss"),
                    "evalLoss": r.get("eval_loss"),
                    "durationMs": str(r.get("duration_ms", 0)),
                }.items()
                if v is not None
            }
            for r in iterations
        ],
        "evaluationMetrics": _metrics(model),
    }
    registry = entry.registry
    if registry:
        run["vertexAiModelId"] = registry["model_id"]
        run["vertexAiModelVersion"] = registry["version"]
    record = entry.record
    out: dict[str, Any] = {
        "kind": "bigquery#model",
        "etag": etag(entry),
        "modelReference": {"projectId": path.project, "datasetId": path.dataset, "modelId": path.model},
        "creationTime": str(created_ms),
        "lastModifiedTime": str(int(record.get("modified_ms") or created_ms)),
        "modelType": model.model_type,
        "location": location,
        "labels": dict(record.get("labels") or {}),
        "featureColumns": [{"name": f.name, "type": _type(f.type)} for f in model.encoder.features],
        "labelColumns": _label_columns(model),
        "trainingRuns": [run],
    }
    description = record["description"] if "description" in record else model.options.get("DESCRIPTION")
    if description:
        out["description"] = description
    if record.get("friendly_name"):
        out["friendlyName"] = record["friendly_name"]
    if record.get("expiration_ms") is not None:
        out["expirationTime"] = str(int(record["expiration_ms"]))
    return out
