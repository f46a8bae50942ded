"""BigQuery ML statement parsing and CREATE MODEL option validation."""

from __future__ import annotations

import pytest

from loopml.errors import InvalidQuery
from loopml.sqlml import options as opts
from loopml.sqlml.sqltext import Call, Scanner
from loopml.sqlml.statements import (
    ModelPath,
    parse_create_model,
    parse_drop_model,
    parse_export_model,
    statement_kind,
)


@pytest.mark.parametrize(
    ("sql", "kind"),
    [
        ("CREATE MODEL ds.m OPTIONS(model_type='kmeans') AS SELECT 1", "CREATE_MODEL"),
        ("  -- comment\n create or replace model `p.ds.m` AS SELECT 1", "CREATE_MODEL"),
        ("/* x */ DROP MODEL IF EXISTS ds.m", "DROP_MODEL"),
        ("EXPORT MODEL ds.m OPTIONS(uri='gs://b/p')", "EXPORT_MODEL"),
        ("CREATE TABLE ds.model AS SELECT 1", None),
        ("SELECT * FROM ML.PREDICT(MODEL ds.m, TABLE ds.t)", None),
        ("DROP TABLE ds.m", None),
        ("ALTER MODEL ds.m SET OPTIONS(vertex_ai_model_id='m')", "ALTER_MODEL"),
    ],
)
def test_statement_kind(sql: str, kind: str | None) -> None:
    assert statement_kind(sql) == kind


def test_create_model_header_options_and_query() -> None:
    sql = (
        "CREATE OR REPLACE MODEL `my-proj.ecommerce_sink.anomaly_detection`\n"
        "OPTIONS(MODEL_TYPE='KMEANS', num_clusters = 2, STANDARDIZE_FEATURES=TRUE, min_rel_progress=.5,\n"
        "        VERTEX_AI_MODEL_VERSION_ALIASES=['prod', \"b\"], DESCRIPTION=r'''a\\n''') -- trailing\n"
        "AS SELECT ecommerce.purchase.tax AS tax FROM t WHERE event='purchase';"
    )
    stmt = parse_create_model(sql, "proj", None)
    assert stmt.path == ModelPath("my-proj", "ecommerce_sink", "anomaly_detection")
    assert stmt.replace and not stmt.if_not_exists
    assert stmt.options == {
        "MODEL_TYPE": "KMEANS",
        "NUM_CLUSTERS": 2,
        "STANDARDIZE_FEATURES": True,
        "MIN_REL_PROGRESS": 0.5,
        "VERTEX_AI_MODEL_VERSION_ALIASES": ["prod", "b"],
        "DESCRIPTION": "a\\n",
    }
    assert stmt.query == "SELECT ecommerce.purchase.tax AS tax FROM t WHERE event='purchase'"


def test_create_model_names_and_defaults() -> None:
    stmt = parse_create_model("CREATE MODEL IF NOT EXISTS m OPTIONS() AS (SELECT 1 AS x)", "p", "ds")
    assert stmt.path == ModelPath("p", "ds", "m") and stmt.if_not_exists and stmt.query == "SELECT 1 AS x"
    assert parse_create_model("create model ds.m as select 1", "p", None).path.full == "p.ds.m"
    with pytest.raises(InvalidQuery, match="missing a dataset"):
        parse_create_model("CREATE MODEL m AS SELECT 1", "p", None)


@pytest.mark.parametrize(
    ("sql", "error", "match"),
    [
        (
            "CREATE MODEL ds.m TRANSFORM(x*2 AS y) OPTIONS(model_type='kmeans') AS SELECT 1",
            InvalidQuery,
            "TRANSFORM",
        ),
        ("CREATE MODEL ds.m INPUT(x INT64) OUTPUT(y INT64) AS SELECT 1", InvalidQuery, "INPUT"),
        ("CREATE TEMP MODEL m AS SELECT 1", InvalidQuery, "TEMP"),
        ("CREATE MODEL ds.m OPTIONS(model_type='kmeans')", InvalidQuery, "needs a training query"),
        (
            "CREATE MODEL ds.m OPTIONS(model_type='kmeans', model_type='kmeans') AS SELECT 1",
            InvalidQuery,
            "more than once",
        ),
        ("CREATE MODEL ds.m OPTIONS(model_type='kmeans' AS SELECT 1", InvalidQuery, "expected"),
        ("CREATE MODEL ds.m OPTIONS(x='unterminated) AS SELECT 1", InvalidQuery, "unterminated"),
        ("CREATE OR REPLACE MODEL IF NOT EXISTS ds.m AS SELECT 1", InvalidQuery, "IF NOT EXISTS"),
        ("CREATE MODEL a.b.c.d AS SELECT 1", InvalidQuery, "Invalid model name"),
        ("CREATE MODEL ds.`bad name` AS SELECT 1", InvalidQuery, "Invalid model name"),
    ],
)
def test_create_model_syntax_errors(sql: str, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        parse_create_model(sql, "p", None)


def test_drop_and_export() -> None:
    drop = parse_drop_model("DROP MODEL IF EXISTS `p2.ds.m`;", "p", None)
    assert drop.if_exists and drop.path == ModelPath("p2", "ds", "m")
    assert not parse_drop_model("drop model ds.m", "p", None).if_exists
    with pytest.raises(InvalidQuery, match="unexpected text"):
        parse_drop_model("DROP MODEL ds.m extra", "p", None)
    export = parse_export_model("EXPORT MODEL ds.m OPTIONS(uri='gs://bucket/dir')", "p", None)
    assert export.options == {"URI": "gs://bucket/dir"}


def test_literals() -> None:
    assert Scanner("-3").literal() == -3
    assert Scanner("1e3").literal() == 1000.0
    assert Scanner("ARRAY<STRING>['a', 'b']").literal() == ["a", "b"]
    assert Scanner("NULL").literal() is None
    assert Scanner("'it\\'s'").literal() == "it's"
    call = Scanner("HPARAM_RANGE(2, 10)").literal()
    assert isinstance(call, Call) and call.name == "HPARAM_RANGE"


# -- options ------------------------------------------------------------------------------------
def test_kmeans_defaults() -> None:
    o = opts.validate({"MODEL_TYPE": "kmeans"}, "m")
    assert o["MODEL_TYPE"] == "KMEANS"
    assert o["NUM_CLUSTERS"] is None  # log10(n) once n is known
    assert (o["KMEANS_INIT_METHOD"], o["DISTANCE_TYPE"], o["STANDARDIZE_FEATURES"]) == (
        "RANDOM",
        "EUCLIDEAN",
        True,
    )
    assert (o["MAX_ITERATIONS"], o["EARLY_STOP"], o["MIN_REL_PROGRESS"], o["WARM_START"]) == (
        20,
        True,
        0.01,
        False,
    )
    assert o["MODEL_REGISTRY"] is None


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"NUM_CLUSTERS": "2"}, "NUM_CLUSTERS expects INT64, got STRING"),
        ({"NUM_CLUSTERS": 2.5}, "NUM_CLUSTERS expects INT64, got FLOAT64"),
        ({"NUM_CLUSTERS": 1}, "NUM_CLUSTERS must be at least 2"),
        ({"NUM_CLUSTERS": 101}, "at most 100"),
        ({"STANDARDIZE_FEATURES": 1}, "STANDARDIZE_FEATURES expects BOOL"),
        ({"DISTANCE_TYPE": "MANHATTAN"}, "Invalid value 'MANHATTAN' for option DISTANCE_TYPE"),
        ({"KMS_KEY_NAME": "projects/x/keys/y"}, "Option KMS_KEY_NAME is not supported"),
        ({"NUM_TRIALS": 5}, "Option NUM_TRIALS is not supported: hyperparameter tuning"),
        ({"NUM_CLUSTERS": Call("HPARAM_RANGE", "HPARAM_RANGE(2, 5)")}, "NUM_CLUSTERS: HPARAM_RANGE"),
        ({"FOO_BAR": 1}, "Unknown option FOO_BAR"),
        ({"INPUT_LABEL_COLS": ["y"]}, "INPUT_LABEL_COLS is not supported for MODEL_TYPE 'KMEANS'"),
        ({"KMEANS_INIT_COL": "c"}, "requires KMEANS_INIT_METHOD = 'CUSTOM'"),
        ({"KMEANS_INIT_METHOD": "CUSTOM"}, "needs KMEANS_INIT_COL"),
        ({"VERTEX_AI_MODEL_ID": "x"}, "only be set together with MODEL_REGISTRY"),
        ({"MODEL_REGISTRY": "SAGEMAKER"}, "expected one of VERTEX_AI"),
        (
            {"MODEL_REGISTRY": "VERTEX_AI", "VERTEX_AI_MODEL_ID": "9lives"},
            "Invalid Vertex AI model id '9lives'",
        ),
        (
            {"MODEL_REGISTRY": "VERTEX_AI", "VERTEX_AI_MODEL_VERSION_ALIASES": ["Prod!"]},
            "Invalid alias 'Prod!'",
        ),
    ],
)
def test_kmeans_option_errors_name_the_option(options: dict, match: str) -> None:
    with pytest.raises(InvalidQuery, match=match):
        opts.validate({"MODEL_TYPE": "KMEANS", **options}, "m")


def test_model_type_required_and_registry_defaults() -> None:
    with pytest.raises(InvalidQuery, match="MODEL_TYPE"):
        opts.validate({}, "m")
    with pytest.raises(InvalidQuery, match="Invalid value 'ARIMA_PLUS'"):
        opts.validate({"MODEL_TYPE": "ARIMA_PLUS"}, "m")
    o = opts.validate({"MODEL_TYPE": "KMEANS", "MODEL_REGISTRY": "vertex_ai"}, "anomaly_detection")
    assert o["VERTEX_AI_MODEL_ID"] == "anomaly_detection"
    with pytest.raises(InvalidQuery, match="from the model name"):
        opts.validate({"MODEL_TYPE": "KMEANS", "MODEL_REGISTRY": "VERTEX_AI"}, "Anomaly")


def test_supervised_options() -> None:
    o = opts.validate({"MODEL_TYPE": "LOGISTIC_REG", "INPUT_LABEL_COLS": ["churned"], "L2_REG": 1}, "m")
    assert o["L2_REG"] == 1.0 and o["DATA_SPLIT_METHOD"] == "AUTO_SPLIT" and not o["AUTO_CLASS_WEIGHTS"]
    b = opts.validate({"MODEL_TYPE": "BOOSTED_TREE_REGRESSOR"}, "m")
    assert (b["MAX_TREE_DEPTH"], b["LEARN_RATE"], b["INPUT_LABEL_COLS"]) == (6, 0.3, ["label"])
    with pytest.raises(InvalidQuery, match="DATA_SPLIT_EVAL_FRACTION needs DATA_SPLIT_METHOD = 'RANDOM'"):
        opts.validate({"MODEL_TYPE": "LINEAR_REG", "DATA_SPLIT_EVAL_FRACTION": 0.3}, "m")
    with pytest.raises(InvalidQuery, match="exactly one column"):
        opts.validate({"MODEL_TYPE": "LINEAR_REG", "INPUT_LABEL_COLS": ["a", "b"]}, "m")
    with pytest.raises(InvalidQuery, match="DATA_SPLIT_COL"):
        opts.validate({"MODEL_TYPE": "LINEAR_REG", "DATA_SPLIT_COL": "c"}, "m")
