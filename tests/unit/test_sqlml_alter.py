"""ALTER MODEL parsing and the metadata updates of ALTER MODEL / models.patch (no I/O)."""

from __future__ import annotations

import datetime as dt

import pytest

from loopml.errors import InvalidArgument, InvalidQuery
from loopml.sqlml import metadata
from loopml.sqlml.statements import ModelPath, parse_alter_model, statement_kind

PATH = ModelPath("p", "ds", "m")


def test_alter_model_statement_is_parsed() -> None:
    sql = (
        "ALTER MODEL IF EXISTS `p.ds.m` SET OPTIONS (\n"
        "  vertex_ai_model_id = 'kmeans_1', -- registry id\n"
        "  VERTEX_AI_MODEL_VERSION_ALIASES = ['champion', 'prod'],\n"
        '  description = "a model",\n'
        "  labels = [('team', 'ml'), STRUCT('stage', 'dev')],\n"
        "  expiration_timestamp = TIMESTAMP '2030-06-01 12:00:00 UTC');"
    )
    assert statement_kind(sql) == "ALTER_MODEL"
    stmt = parse_alter_model(sql, "other", None)
    assert stmt.path == PATH and stmt.if_exists
    assert stmt.options == {
        "VERTEX_AI_MODEL_ID": "kmeans_1",
        "VERTEX_AI_MODEL_VERSION_ALIASES": ["champion", "prod"],
        "DESCRIPTION": "a model",
        "LABELS": [["team", "ml"], ["stage", "dev"]],
        "EXPIRATION_TIMESTAMP": "2030-06-01 12:00:00 UTC",
    }
    up = metadata.from_alter(stmt.options)
    assert up.vertex_model_id == "kmeans_1" and up.aliases == ["champion", "prod"]
    assert up.labels == {"team": "ml", "stage": "dev"} and up.replace_labels
    expires = dt.datetime(2030, 6, 1, 12, tzinfo=dt.UTC)
    assert up.expiration_ms == int(expires.timestamp() * 1000)
    assert up.given == {"description", "labels", "expirationTime"}
    assert parse_alter_model("ALTER MODEL m SET OPTIONS(labels=[])", "p", "ds").options == {"LABELS": []}


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("ALTER MODEL ds.m SET OPTIONS(kms_key_name='k')", "option KMS_KEY_NAME is not supported"),
        (
            "ALTER MODEL ds.m SET OPTIONS(model_registry='VERTEX_AI')",
            "option MODEL_REGISTRY is not supported",
        ),
        ("ALTER MODEL ds.m SET OPTIONS(num_clusters=4)", "unsupported ALTER MODEL option NUM_CLUSTERS"),
        (
            "ALTER MODEL ds.m SET OPTIONS(description='a', description='b')",
            "DESCRIPTION is given more than once",
        ),
        ("ALTER MODEL ds.m SET OPTIONS()", "at least one option"),
        ("ALTER MODEL ds.m RENAME TO n", "SET OPTIONS"),
        ("ALTER MODEL ds.m SET OPTIONS(description='a') extra", "unexpected text"),
        ("ALTER MODEL m SET OPTIONS(description='a')", "missing a dataset"),
    ],
)
def test_bad_alter_statements_name_the_problem(sql: str, message: str) -> None:
    with pytest.raises(InvalidQuery, match=message):
        parse_alter_model(sql, "p", None)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"VERTEX_AI_MODEL_ID": "9lives"}, "Invalid Vertex AI model id '9lives'"),
        ({"VERTEX_AI_MODEL_ID": 3}, "Invalid Vertex AI model id 3"),
        ({"VERTEX_AI_MODEL_VERSION_ALIASES": ["ok", "Not Ok"]}, "Invalid alias 'Not Ok'"),
        ({"LABELS": [["team", None]]}, "needs a STRING value"),
        ({"LABELS": [["team", "ML"]]}, "invalid value 'ML' of label 'team'"),
        ({"DESCRIPTION": 5}, "DESCRIPTION expects STRING"),
        ({"EXPIRATION_TIMESTAMP": "not a time"}, "invalid timestamp"),
    ],
)
def test_bad_alter_values_are_refused(options: dict, message: str) -> None:
    with pytest.raises(InvalidQuery, match=message):
        metadata.from_alter(options)


def test_patch_bodies() -> None:
    up = metadata.from_patch(
        {
            "kind": "bigquery#model",
            "etag": "x",
            "modelReference": {"projectId": "p", "datasetId": "ds", "modelId": "m"},
            "description": None,
            "labels": {"a": "1", "b": None},
            "expirationTime": "1700000000000",
            "trainingRuns": [{"vertexAiModelId": "reg_1", "trainingOptions": {}}],
        },
        PATH,
    )
    assert up.given == {"description", "labels", "expirationTime"} and up.description is None
    assert up.labels == {"a": "1", "b": None} and not up.replace_labels
    assert up.expiration_ms == 1_700_000_000_000 and up.vertex_model_id == "reg_1" and up.aliases is None
    bad = [
        ([], "JSON Model object"),
        ({"modelReference": {"modelId": "other"}}, "modelReference.modelId 'other' does not match"),
        ({"expirationTime": "tomorrow"}, "milliseconds since the epoch"),
        ({"labels": ["a"]}, "labels must be an object"),
        ({"friendlyName": 3}, "friendlyName must be a string"),
        (
            {"trainingRuns": [{"vertexAiModelId": "a"}, {"vertexAiModelId": "b"}]},
            "more than one vertexAiModelId",
        ),
        ({"trainingRuns": {"vertexAiModelId": "a"}}, "must be a list"),
        ({"trainingRuns": 3}, "must be a list"),
        # malformed ids are 400s naming the field, not a TypeError from building a set
        (
            {"trainingRuns": [{"vertexAiModelId": ["x"]}]},
            r"trainingRuns\[0\]\.vertexAiModelId must be a string",
        ),
        ({"trainingRuns": [{}, {"vertexAiModelId": {"a": 1}}]}, r"trainingRuns\[1\]\.vertexAiModelId"),
        ({"trainingRuns": [{"vertexAiModelId": 7}]}, r"trainingRuns\[0\]\.vertexAiModelId must be a string"),
        ({"expirationTime": "\u00b2"}, "milliseconds since the epoch"),  # '²'.isdigit() is True
        ({"expirationTime": "--5"}, "milliseconds since the epoch"),
        ({"expirationTime": "\uff11"}, "milliseconds since the epoch"),  # fullwidth 1
        ({"etag": "x", "schema": {}}, "field 'schema'"),
    ]
    for body, message in bad:
        with pytest.raises(InvalidArgument, match=message):
            metadata.from_patch(body, PATH)
