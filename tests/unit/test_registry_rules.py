"""Pure rules of the registry: traffic split arithmetic, alias merging, framework detection, list filters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loopml.errors import FailedPrecondition, InvalidArgument
from loopml.registry import aliases, traffic
from loopml.registry.frameworks import detect_framework, prebuilt_framework, supported_deployment_types
from loopml.registry.listing import paginate, parse_filter, parse_order

# -- SDK arithmetic (vertex-api.md §4 tables) --------------------------------------------------


@pytest.mark.parametrize(
    ("current", "pct", "sent"),
    [
        ({"a": 100}, 50, {"a": 50, "0": 50}),
        ({"a": 50, "b": 50}, 33, {"a": 34, "b": 33, "0": 33}),
        ({"b": 71, "a": 29}, 0, {"b": 72, "a": 28, "0": 0}),
        ({"b": 43, "a": 57}, 0, {"b": 44, "a": 56, "0": 0}),
        ({}, 100, {"0": 100}),
        ({"a": 60, "b": 40}, 100, {"0": 100}),
    ],
)
def test_deploy_split_matches_the_sdk(current: dict[str, int], pct: int, sent: dict[str, int]) -> None:
    assert traffic.deploy_split(current, pct) == sent
    assert list(traffic.deploy_split(current, pct)) == list(sent)  # map order matters for the +1s


def test_first_model_cannot_take_partial_traffic() -> None:
    with pytest.raises(InvalidArgument, match="first model"):
        traffic.deploy_split({}, 40)


def test_undeploy_split_matches_the_sdk() -> None:
    assert traffic.undeploy_split({"a": 50, "b": 30, "c": 20}, "c") == {"a": 63, "b": 37}
    assert traffic.undeploy_split({"a": 100}, "a") is None
    assert traffic.undeploy_split({"a": 100, "b": 0}, "b") == {"a": 100}
    with pytest.raises(FailedPrecondition):
        traffic.undeploy_split({"a": 100, "b": 0}, "a")


# -- server rules --------------------------------------------------------------------------------


def test_split_for_deploy_rewrites_zero_key_and_checks_sum() -> None:
    assert traffic.split_for_deploy({"1": 100}, {"1": 30, "0": 70}, "2", ["1"]) == {"1": 30, "2": 70}
    assert traffic.split_for_deploy({"1": 100}, {}, "2", ["1"]) == {"1": 100}
    with pytest.raises(InvalidArgument, match="sum to 100"):
        traffic.split_for_deploy({}, {"0": 50}, "2", [])
    with pytest.raises(InvalidArgument, match="not on this endpoint"):
        traffic.split_for_deploy({}, {"0": 50, "9": 50}, "2", [])


def test_parse_split_rejects_bad_shapes() -> None:
    assert traffic.parse_split({"1": 50.0, "2": 50}) == {"1": 50, "2": 50}
    for bad in ([1], {"x": 1}, {"1": "50"}, {"1": 50.5}, {"1": 101}, {"1": True}):
        with pytest.raises(InvalidArgument):
            traffic.parse_split(bad)


def test_split_for_undeploy_rules() -> None:
    assert traffic.split_for_undeploy({"1": 100}, {}, "1", []) == {}
    assert traffic.split_for_undeploy({"1": 100, "2": 0}, {}, "2", ["1"]) == {"1": 100}
    with pytest.raises(FailedPrecondition, match="receives 100%"):
        traffic.split_for_undeploy({"1": 100, "2": 0}, {}, "1", ["2"])
    assert traffic.split_for_undeploy({"1": 100, "2": 0}, {"2": 100}, "1", ["2"]) == {"2": 100}
    with pytest.raises(FailedPrecondition, match="still gives"):
        traffic.split_for_undeploy({"1": 50, "2": 50}, {"1": 50, "2": 50}, "1", ["2"])


# -- aliases ---------------------------------------------------------------------------------------


def test_alias_format() -> None:
    for ok in ("prod", "a1", "blue-green", "champion2"):
        assert aliases.check_alias(ok) == ok
    for bad in ("1", "42", "Prod", "-x", "x-", "a", "a_b", "", 7):
        with pytest.raises(InvalidArgument):
            aliases.check_alias(bad)


def test_merge_adds_removes_moves_and_cancels() -> None:
    current = {"default": "1", "staging": "1", "prod": "2"}
    assert aliases.merge(current, "2", ["-prod", "canary"]) == {"default": "1", "staging": "1", "canary": "2"}
    assert aliases.merge(current, "2", ["staging"]) == {"default": "1", "staging": "2", "prod": "2"}
    assert aliases.merge(current, "2", ["x-y", "-x-y"]) == current
    assert aliases.merge(current, "2", ["default"])["default"] == "2"
    assert aliases.merge(current, "1", ["-prod"]) == current  # not held by this version: no change


def test_default_cannot_be_removed() -> None:
    with pytest.raises(FailedPrecondition, match="default"):
        aliases.merge({"default": "1"}, "1", ["-default"])
    assert aliases.merge({"default": "1"}, "1", ["default", "-default"]) == {"default": "1"}


def test_parse_aliases_removal_only_when_allowed() -> None:
    assert aliases.parse_aliases(["a1", "-b1"], allow_removal=True) == ["a1", "-b1"]
    with pytest.raises(InvalidArgument, match="only allowed"):
        aliases.parse_aliases(["-b1"], allow_removal=False)
    with pytest.raises(InvalidArgument, match="list"):
        aliases.parse_aliases("prod", allow_removal=True)
    assert aliases.aliases_of({"z1": "1", "default": "1", "a1": "1", "b2": "2"}, "1") == [
        "default",
        "a1",
        "z1",
    ]


# -- frameworks ------------------------------------------------------------------------------------


def test_prebuilt_images() -> None:
    assert prebuilt_framework("us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-2") == "sklearn"
    assert (
        prebuilt_framework("europe-docker.pkg.dev/vertex-ai/prediction/xgboost-cpu.1-7:latest") == "xgboost"
    )
    assert prebuilt_framework("us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-9") == "tensorflow"
    assert prebuilt_framework("gcr.io/cloud-aiplatform/prediction/sklearn-cpu.0-24:latest") == "sklearn"
    assert prebuilt_framework("us-docker.pkg.dev/my-project/repo/sklearn-cpu.1-2") is None


def test_detect_framework(tmp_path: Path) -> None:
    sk = {"imageUri": "us-docker.pkg.dev/vertex-ai/prediction/sklearn-cpu.1-2"}
    assert detect_framework(sk, None) == "sklearn"
    assert detect_framework({**sk, "command": ["python", "serve.py"]}, None) == "custom-container"
    assert (
        detect_framework({"imageUri": "us-central1-docker.pkg.dev/p/r/server:1"}, None) == "custom-container"
    )
    (tmp_path / "loopml_model.json").write_text(json.dumps({"framework": "bqml-kmeans"}))
    assert detect_framework({}, tmp_path) == "bqml-kmeans"
    assert supported_deployment_types("bqml-kmeans") == ["DEDICATED_RESOURCES", "AUTOMATIC_RESOURCES"]
    assert supported_deployment_types("sklearn") == ["DEDICATED_RESOURCES"]
    (tmp_path / "loopml_model.json").write_text("{not json")
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        detect_framework({}, tmp_path)
    with pytest.raises(InvalidArgument, match="imageUri is required"):
        detect_framework({}, None)


# -- list filters ----------------------------------------------------------------------------------


def _items() -> list[dict[str, object]]:
    return [
        {
            "name": "p/models/a",
            "displayName": "churn",
            "labels": {"team": "x"},
            "createTime": "2024-01-01T00:00:01Z",
        },
        {
            "name": "p/models/b",
            "displayName": "churn",
            "labels": {"team": "y"},
            "createTime": "2024-01-01T00:00:03Z",
        },
        {"name": "p/models/c", "displayName": "fraud", "labels": {}, "createTime": "2024-01-01T00:00:02Z"},
    ]


def test_filters_and_order() -> None:
    pred = parse_filter('display_name="churn" AND labels.team="y"', "model_id")
    assert [i["name"] for i in _items() if pred(i)] == ["p/models/b"]
    assert [i["name"] for i in _items() if parse_filter("labels.team:*", "model_id")(i)] == [
        "p/models/a",
        "p/models/b",
    ]
    assert parse_order("create_time desc, display_name") == [("createTime", True), ("displayName", False)]
    for bad in ("color=red", "display_name ~ 'x'"):
        with pytest.raises(InvalidArgument, match="filter"):
            parse_filter(bad, "model_id")
    with pytest.raises(InvalidArgument, match="orderBy"):
        parse_order("size desc")


def test_pagination_follows_tokens() -> None:
    page, token = paginate(
        _items(), filter_text=None, order_by="create_time desc", page_size=2, page_token=None, id_key="m"
    )
    assert [i["name"] for i in page] == ["p/models/b", "p/models/c"]
    assert token
    page2, token2 = paginate(
        _items(), filter_text=None, order_by="create_time desc", page_size=2, page_token=token, id_key="m"
    )
    assert [i["name"] for i in page2] == ["p/models/a"] and token2 is None
    with pytest.raises(InvalidArgument, match="pageToken"):
        paginate(
            _items(),
            filter_text="display_name=churn",
            order_by=None,
            page_size=2,
            page_token=token,
            id_key="m",
        )
    with pytest.raises(InvalidArgument, match="pageSize"):
        paginate(_items(), filter_text=None, order_by=None, page_size="ten", page_token=None, id_key="m")
