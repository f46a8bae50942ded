"""DeployedModel number fields and batching `systemLabels`: only ASCII decimal numbers are accepted."""

from __future__ import annotations

import pytest

from loopml.errors import InvalidArgument
from loopml.registry.deployments import as_int, batching


def test_batching_labels_are_parsed() -> None:
    assert batching(None) == {}
    assert batching({"team": "ml"}) == {}
    assert batching({"loopml-max-batch-size": " 8 ", "loopml-batch-wait-ms": "2.5"}) == {
        "maxBatchSize": 8,
        "batchWaitSeconds": 0.0025,
    }


@pytest.mark.parametrize(
    ("labels", "needle"),
    [
        # '²'.isdigit() is True but int('²') raises: must be a 400, not a 500
        ({"loopml-max-batch-size": "\u00b2"}, "must be an integer from 1 to 1024"),
        # fullwidth '１': int() reads it, but it is not a decimal number as Vertex writes one
        ({"loopml-max-batch-size": "\uff11"}, "must be an integer from 1 to 1024"),
        ({"loopml-max-batch-size": "-3"}, "must be an integer from 1 to 1024"),
        ({"loopml-max-batch-size": "1025"}, "must be an integer from 1 to 1024"),
        ({"loopml-batch-wait-ms": "\uff15"}, "must be a number of milliseconds"),
        ({"loopml-batch-wait-ms": "\u00b2"}, "must be a number of milliseconds"),
        ({"loopml-batch-wait-ms": "inf"}, "must be a number of milliseconds"),
        ({"loopml-batchsize": "4"}, "unknown loopml label"),
        ({"team": 3}, "must be a map of strings to strings"),
    ],
)
def test_bad_batching_labels_are_400s(labels: dict, needle: str) -> None:
    with pytest.raises(InvalidArgument, match=needle) as info:
        batching(labels)
    assert info.value.status == 400


def test_as_int_takes_ascii_decimals_only() -> None:
    assert as_int(" 12 ", "f") == 12 and as_int("-2", "f") == -2 and as_int(3.0, "f") == 3
    for bad in ("\u00b2", "\uff11", "1.5", "--1", "", True, 2.5, None):
        with pytest.raises(InvalidArgument, match="f must be an integer"):
            as_int(bad, "f")


def test_stored_labels_are_checked_leniently(caplog: pytest.LogCaptureFixture) -> None:
    """Labels stored by an older loopml: bad or unknown ones are logged and ignored, never raised."""
    stored = {"loopml-max-batch-size": "\u00b2", "loopml-batch-wait-ms": "5", "loopml-old": "x", "t": 1}
    with caplog.at_level("WARNING", logger="loopml.registry.deployments"):
        assert batching(stored, strict=False) == {"batchWaitSeconds": 0.005}
    assert "loopml-max-batch-size" in caplog.text and "loopml-old" in caplog.text
    assert batching(["not", "a", "map"], strict=False) == {}
    with pytest.raises(InvalidArgument):
        batching(stored)
