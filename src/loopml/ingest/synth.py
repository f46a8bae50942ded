"""The hack-your-pipe e-commerce event generator (workload 1), reproducible with a seed.

Per event: `draw = round(uniform(0, 1), 2)` picks the template (below 1/3 view_item, below 2/3
add_to_cart, below 0.95 purchase, otherwise the purchase anomaly whose value is 1000000.10), and
`user_id = "UID0000" + str(round(uniform(0, 5)))`. Everything else comes from fixed templates
(written for loopml with the workshop's documented values). `noise` multiplies a purchase's tax,
shipping and value by (1 + noise * N(0, 1)); `drift` shifts a normal purchase's value by the
factor (1 + drift). With noise and drift at 0 the stream is the workshop's.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

_ITEM_A = {
    "item_id": "67890",
    "item_name": "Loop Trail Runner",
    "item_category": "Shoes",
    "item_brand": "Loopwear",
    "item_variant": "blue",
    "price": 12.22,
    "quantity": 1,
}
_ITEM_B = {
    "item_id": "12345",
    "item_name": "Loop Water Bottle",
    "item_category": "Accessories",
    "item_brand": "Loopwear",
    "item_variant": "steel",
    "price": 13.22,
    "quantity": 1,
}

VIEW_ITEM: dict[str, Any] = {
    "event_datetime": "2020-11-16 20:59:59",
    "event": "view_item",
    "user_id": "UID00003",
    "client_id": "CID00003",
    "page": "/product-67890",
    "page_previous": "/category-shoes",
    "ecommerce": {"items": [_ITEM_A]},
}
ADD_TO_CART: dict[str, Any] = {
    "event_datetime": "2020-11-16 21:01:33",
    "event": "add_to_cart",
    "user_id": "UID00003",
    "client_id": "CID00003",
    "page": "/product-67890",
    "page_previous": "/category-shoes",
    "ecommerce": {"items": [_ITEM_A]},
}
PURCHASE: dict[str, Any] = {
    "event_datetime": "2020-11-16 21:10:12",
    "event": "purchase",
    "user_id": "UID00003",
    "client_id": "CID00003",
    "page": "/checkout",
    "page_previous": "/order-confirmation",
    "ecommerce": {
        "purchase": {
            "transaction_id": "T12345",
            "affiliation": "Loop Online Store",
            "value": 35.43,
            "tax": 4.90,
            "shipping": 5.99,
            "currency": "EUR",
            "coupon": "SUMMER_FUN",
            "items": [_ITEM_A, _ITEM_B],
        }
    },
}
PURCHASE_ANOMALY: dict[str, Any] = copy.deepcopy(PURCHASE)
PURCHASE_ANOMALY["event_datetime"] = "2020-11-16 21:12:14"
PURCHASE_ANOMALY["ecommerce"]["purchase"]["value"] = 1000000.10

ANOMALY_VALUE = 1000000.10


def make_event(rng: random.Random, *, noise: float = 0.0, drift: float = 0.0) -> dict[str, Any]:
    """One event, drawn exactly as the workshop's generator draws it."""
    draw = round(rng.uniform(0, 1), 2)
    user_id = "UID0000" + str(round(rng.uniform(0, 5)))
    if draw < 1 / 3:
        event = copy.deepcopy(VIEW_ITEM)
    elif draw < 2 / 3:
        event = copy.deepcopy(ADD_TO_CART)
    elif draw < 0.95:
        event = copy.deepcopy(PURCHASE)
        if drift:
            purchase = event["ecommerce"]["purchase"]
            purchase["value"] = round(purchase["value"] * (1 + drift), 2)
    else:
        event = copy.deepcopy(PURCHASE_ANOMALY)
    event["user_id"] = user_id
    if noise and event["event"] == "purchase":
        purchase = event["ecommerce"]["purchase"]
        for key in ("tax", "shipping", "value"):
            purchase[key] = max(0.0, round(purchase[key] * (1 + noise * rng.gauss(0.0, 1.0)), 2))
    return event


def is_anomaly(event: dict[str, Any]) -> bool:
    return event.get("event") == "purchase" and event["ecommerce"]["purchase"]["value"] > 100_000


def events(seed: int | None = None, *, noise: float = 0.0, drift: float = 0.0) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    while True:
        yield make_event(rng, noise=noise, drift=drift)


@dataclass
class SendStats:
    sent: int = 0
    acknowledged: int = 0
    failed: int = 0
    requests: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        return self.acknowledged / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "acknowledged": self.acknowledged,
            "failed": self.failed,
            "requests": self.requests,
            "seconds": round(self.seconds, 3),
            "events_per_s": round(self.events_per_s, 1),
        }


def json_url(endpoint: str) -> str:
    """`<endpoint>/json`, keeping a query string (`…/ingest/t?project=p` → `…/ingest/t/json?project=p`)."""
    url = httpx.URL(endpoint)
    return str(url.copy_with(path=url.path.rstrip("/") + "/json"))


def send(
    endpoint: str,
    *,
    count: int | None = None,
    duration: float | None = None,
    rate: float = 10.0,
    batch: int = 1,
    seed: int | None = None,
    noise: float = 0.0,
    drift: float = 0.0,
    keep_ids: bool = False,
    on_progress: Callable[[int], None] | None = None,
    client: httpx.Client | None = None,
) -> SendStats:
    """POST events to `<endpoint>/json` (one object per request, or arrays of `batch`).

    `rate` is events per second (0 = as fast as the server answers). Stops after `count`
    events or `duration` seconds, whichever is given (neither: until interrupted).
    """
    url = json_url(endpoint)
    stream = events(seed, noise=noise, drift=drift)
    stats = SendStats()
    own = client is None
    http = client or httpx.Client(timeout=60.0)
    start = time.monotonic()
    try:
        while True:
            elapsed = time.monotonic() - start
            if count is not None and stats.sent >= count:
                break
            if duration is not None and elapsed >= duration:
                break
            n = batch if count is None else min(batch, count - stats.sent)
            chunk = [next(stream) for _ in range(n)]
            body: Any = chunk if batch > 1 else chunk[0]
            stats.sent += n
            stats.requests += 1
            try:
                resp = http.post(url, json=body)
                if resp.status_code == 200:
                    ids = resp.json().get("messageIds") or []
                    stats.acknowledged += len(ids)
                    stats.failed += n - len(ids)
                    if keep_ids:
                        stats.message_ids.extend(ids)
                else:
                    stats.failed += n
                    if len(stats.errors) < 20:
                        stats.errors.append(f"HTTP {resp.status_code}: {resp.text[:200]}")
            except httpx.HTTPError as exc:
                stats.failed += n
                if len(stats.errors) < 20:
                    stats.errors.append(f"{type(exc).__name__}: {exc}")
                if isinstance(exc, httpx.ConnectError) and not stats.acknowledged:
                    stats.errors.append(f"nothing is listening at {url}; is the server running?")
                    break
            if on_progress is not None:
                on_progress(n)
            if rate > 0:
                target = start + stats.sent / rate
                pause = target - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
    finally:
        stats.seconds = time.monotonic() - start
        if own:
            http.close()
    return stats
