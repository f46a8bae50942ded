"""Names from requests are checked whole: a trailing newline (which `$` would let through) is refused."""

from __future__ import annotations

import re

import pytest

from loopml import refs
from loopml.errors import InvalidArgument
from loopml.warehouse.base import check_name

GOOD = {
    "project": ("my-project", refs.PROJECT_RE),
    "location": ("us-central1", refs.LOCATION_RE),
    "model id": ("anomaly_detection", refs.MODEL_ID_RE),
    "endpoint id": ("iris-ep", refs.ENDPOINT_ID_RE),
    "alias": ("champion", refs.ALIAS_RE),
    "version": ("12", refs.VERSION_RE),
    "id": ("op_1", refs.GENERIC_ID_RE),
}


@pytest.mark.parametrize("what", sorted(GOOD))
def test_refs_patterns_take_the_name_and_refuse_it_with_a_trailing_newline(what: str) -> None:
    value, pattern = GOOD[what]
    assert refs.check(pattern, value, what) == value
    for bad in (value + "\n", value + "\r\n", "\n" + value):
        with pytest.raises(InvalidArgument):
            refs.check(pattern, bad, what)


@pytest.mark.parametrize(
    "kind,value", [("project", "p1"), ("dataset", "ecommerce_sink"), ("table", "cloud_run")]
)
def test_warehouse_names_refuse_a_trailing_newline(kind: str, value: str) -> None:
    assert check_name(kind, value) == value
    with pytest.raises(InvalidArgument):
        check_name(kind, value + "\n")


def test_no_anchored_name_pattern_ends_in_a_bare_dollar() -> None:
    """Every `^...$`-style pattern in the modules above anchors with \\Z."""
    import loopml.warehouse.base as base

    patterns = [v for m in (refs, base) for v in vars(m).values() if isinstance(v, re.Pattern)]
    assert patterns
    for p in patterns:
        if p.pattern.startswith("^"):
            assert not p.pattern.endswith("$"), p.pattern
