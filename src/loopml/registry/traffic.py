"""Traffic split rules (server side) and the Vertex SDK's split arithmetic (client side).

Server rules (vertex-api.md §4): a split maps deployed model ids to integer percentages and
either sums to 100 or is empty. In deployModel, key "0" means the model being deployed; a
non-empty split replaces the endpoint's split, an empty one leaves it unchanged.

The SDK arithmetic (`deploy_split`, `undeploy_split`) reproduces what google-cloud-aiplatform
sends, including its floating-point rounding, so the loopml client and CLI behave the same.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from loopml.errors import FailedPrecondition, InvalidArgument

NEW_MODEL_KEY = "0"


def parse_split(value: Any, field: str = "trafficSplit") -> dict[str, int]:
    """Validate the shape of a split: string keys, integer values 0–100 (floats like 50.0 ok)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{field} must be an object mapping deployed model ids to percentages.")
    out: dict[str, int] = {}
    for key, pct in value.items():
        if not isinstance(key, str) or not key.isdigit():
            raise InvalidArgument(f"{field}: key {key!r} is not a deployed model id.")
        if isinstance(pct, bool) or not isinstance(pct, int | float):
            raise InvalidArgument(f"{field}[{key}]: percentage must be an integer, got {pct!r}.")
        if isinstance(pct, float) and not pct.is_integer():
            raise InvalidArgument(f"{field}[{key}]: percentage must be an integer, got {pct!r}.")
        ipct = int(pct)
        if not 0 <= ipct <= 100:
            raise InvalidArgument(f"{field}[{key}]: percentage must be between 0 and 100, got {ipct}.")
        out[key] = ipct
    return out


def check_split(split: dict[str, int], deployed_ids: Iterable[str], field: str = "trafficSplit") -> None:
    """A non-empty split sums to 100 and names only deployed ids."""
    if not split:
        return
    known = set(deployed_ids)
    unknown = sorted(k for k in split if k not in known)
    if unknown:
        raise InvalidArgument(
            f"{field} names deployed model ids that are not on this endpoint: {', '.join(unknown)}."
        )
    total = sum(split.values())
    if total != 100:
        raise InvalidArgument(f"{field} must sum to 100, got {total}.")


def split_for_deploy(
    current: dict[str, int], requested: dict[str, int], new_id: str, existing_ids: Iterable[str]
) -> dict[str, int]:
    """The endpoint's split after deploying `new_id` with the requested split."""
    if not requested:
        return dict(current)
    rewritten = {(new_id if k == NEW_MODEL_KEY else k): v for k, v in requested.items()}
    check_split(rewritten, [*existing_ids, new_id])
    return rewritten


def split_for_undeploy(
    current: dict[str, int], requested: dict[str, int], removed_id: str, remaining_ids: list[str]
) -> dict[str, int]:
    """The endpoint's split after undeploying `removed_id`.

    Undeploying the last model empties the split. Otherwise the model must have no traffic, or
    the requested split must take it away.
    """
    if requested.get(removed_id, 0) != 0:
        raise FailedPrecondition(
            f"trafficSplit still gives {requested[removed_id]}% to deployed model {removed_id}, "
            "which is being undeployed."
        )
    if not remaining_ids:
        return {}
    if requested:
        cleaned = {k: v for k, v in requested.items() if k != removed_id}
        check_split(cleaned, remaining_ids)
        return cleaned
    share = current.get(removed_id, 0)
    if share > 0:
        raise FailedPrecondition(
            f"Deployed model {removed_id} receives {share}% of the endpoint's traffic: move its traffic "
            "to other deployed models first, or pass a trafficSplit without it."
        )
    return {k: v for k, v in current.items() if k != removed_id}


# -- SDK arithmetic (client side) -----------------------------------------------------------


def deploy_split(current: dict[str, int], percentage: int) -> dict[str, int]:
    """What the Vertex SDK sends as trafficSplit when deploying with `traffic_percentage`."""
    if not 0 <= percentage <= 100:
        raise InvalidArgument(f"traffic percentage must be between 0 and 100, got {percentage}.")
    if not current or sum(current.values()) == 0:
        if 0 < percentage < 100:
            raise InvalidArgument(
                "The first model on an endpoint takes all its traffic: use --traffic 100 (or 0)."
            )
        return {NEW_MODEL_KEY: 100}
    if percentage == 100:
        return {NEW_MODEL_KEY: 100}  # the old ids drop to 0
    rest = 100 - percentage
    new = {k: math.floor(v / 100 * rest) for k, v in current.items()}
    _spread(new, rest - sum(new.values()))
    new[NEW_MODEL_KEY] = percentage
    return new


def undeploy_split(current: dict[str, int], removed_id: str) -> dict[str, int] | None:
    """What the Vertex SDK sends when undeploying `removed_id` without an explicit split."""
    others = [k for k in current if k != removed_id]
    if not others:
        return None
    share = current.get(removed_id, 0)
    if share == 100:
        raise FailedPrecondition(
            f"Deployed model {removed_id} takes 100% of the traffic: set a traffic split that moves it "
            "to the other deployed models first."
        )
    left = 100 - share
    new = {k: math.floor(current[k] / left * 100) for k in others}
    _spread(new, 100 - sum(new.values()))
    return new


def _spread(split: dict[str, int], missing: int) -> None:
    keys = list(split)
    i = 0
    while missing > 0 and keys:
        split[keys[i % len(keys)]] += 1
        missing -= 1
        i += 1
