"""`loopml endpoints traffic` arithmetic: explicit splits, canaries, model references."""

from __future__ import annotations

import pytest
import typer

from loopml.cli.traffic import new_split, parse_assignments, resolve_deployed

DEPLOYED = [
    {"id": "11", "model": "projects/p/locations/l/models/churn", "modelVersionId": "1"},
    {"id": "22", "model": "projects/p/locations/l/models/churn", "modelVersionId": "2"},
    {"id": "33", "model": "projects/p/locations/l/models/fraud", "modelVersionId": "4"},
]


def test_explicit_split_names_every_point() -> None:
    assert new_split({"11": 100}, {"11": 70, "22": 30}, ["11", "22", "33"]) == {"11": 70, "22": 30, "33": 0}
    assert new_split({"11": 50, "22": 50}, {"11": 100}, ["11", "22"]) == {"11": 100, "22": 0}  # rollback


def test_canary_keeps_the_others_proportions() -> None:
    assert new_split({"11": 100, "22": 0}, {"22": 10}, ["11", "22"]) == {"11": 90, "22": 10}
    assert new_split({"11": 50, "22": 30, "33": 20}, {"33": 40}, ["11", "22", "33"]) == {
        "11": 38,
        "22": 22,
        "33": 40,
    }
    assert sum(new_split({"11": 1, "22": 1}, {"33": 33}, ["11", "22", "33"]).values()) == 100


def test_bad_splits_fail_clearly() -> None:
    with pytest.raises(typer.Exit):
        new_split({}, {"11": 60, "22": 60}, ["11", "22"])
    with pytest.raises(typer.Exit):
        parse_assignments(["churn@2"])
    with pytest.raises(typer.Exit):
        parse_assignments(["churn@2=120"])
    assert parse_assignments(["churn@2=10%", "33=90"]) == [("churn@2", 10), ("33", 90)]


def test_model_references() -> None:
    def alias(ref: str) -> str:
        return {"churn@challenger": "2"}[ref]

    assert resolve_deployed("33", DEPLOYED, alias) == "33"
    assert resolve_deployed("fraud", DEPLOYED, alias) == "33"
    assert resolve_deployed("churn@1", DEPLOYED, alias) == "11"
    assert resolve_deployed("churn@challenger", DEPLOYED, alias) == "22"
    with pytest.raises(typer.Exit):
        resolve_deployed("churn", DEPLOYED, alias)  # two versions deployed: ambiguous
    with pytest.raises(typer.Exit):
        resolve_deployed("spam", DEPLOYED, alias)
