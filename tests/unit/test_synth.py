"""The workload-1 generator: documented distributions, templates, determinism, noise and drift."""

from __future__ import annotations

import random
from collections import Counter
from itertools import islice

from loopml.ingest.synth import ANOMALY_VALUE, events, is_anomaly, make_event


def test_templates_carry_the_workshop_values() -> None:
    rng = random.Random(1)
    seen = {}
    while len(seen) < 4:
        e = make_event(rng)
        kind = "anomaly" if is_anomaly(e) else e["event"]
        seen[kind] = e
    p = seen["purchase"]["ecommerce"]["purchase"]
    assert (p["value"], p["tax"], p["shipping"]) == (35.43, 4.90, 5.99)
    assert len(p["items"]) == 2 and all(isinstance(i["item_id"], str) for i in p["items"])
    assert seen["anomaly"]["event"] == "purchase"
    assert seen["anomaly"]["ecommerce"]["purchase"]["value"] == ANOMALY_VALUE == 1000000.10
    for e in seen.values():
        assert e["client_id"] == "CID00003"
        assert e["event_datetime"].startswith("2020-11-16 ") and len(e["event_datetime"]) == 19


def test_distribution_matches_the_documented_probabilities() -> None:
    sample = list(islice(events(seed=42), 40_000))
    kinds = Counter("anomaly" if is_anomaly(e) else e["event"] for e in sample)
    n = len(sample)
    assert abs(kinds["view_item"] / n - 0.335) < 0.01
    assert abs(kinds["add_to_cart"] / n - 0.33) < 0.01
    assert abs(kinds["purchase"] / n - 0.28) < 0.01
    assert abs(kinds["anomaly"] / n - 0.055) < 0.006
    users = Counter(e["user_id"] for e in sample)
    assert set(users) == {f"UID0000{i}" for i in range(6)}
    assert abs(users["UID00000"] / n - 0.1) < 0.01 and abs(users["UID00005"] / n - 0.1) < 0.01
    assert abs(users["UID00003"] / n - 0.2) < 0.012


def test_seed_makes_the_stream_reproducible_and_noise_drift_change_it() -> None:
    a = list(islice(events(seed=7), 200))
    assert a == list(islice(events(seed=7), 200))
    assert a != list(islice(events(seed=8), 200))
    drifted = list(islice(events(seed=7, drift=0.5), 200))
    normal = [e for e in drifted if e["event"] == "purchase" and not is_anomaly(e)]
    assert normal and all(e["ecommerce"]["purchase"]["value"] == round(35.43 * 1.5, 2) for e in normal)
    noisy = [e for e in islice(events(seed=7, noise=0.1), 500) if e["event"] == "purchase"]
    taxes = {e["ecommerce"]["purchase"]["tax"] for e in noisy}
    assert len(taxes) > 10 and all(t >= 0 for t in taxes)
