"""`loopml endpoints traffic ENDPOINT [MODEL=PCT ...]`: show or change an endpoint's traffic split;
`loopml endpoints replicas ENDPOINT`: the replicas behind each deployed model.

MODEL is a deployed model id or a model reference deployed on the endpoint: `churn` (when only
one version of it is deployed), `churn@2` or `churn@challenger`. Examples::

    loopml endpoints traffic prod                          # show the split
    loopml endpoints traffic prod churn@2=10               # canary: 10 % to v2, the rest keep their shares
    loopml endpoints traffic prod churn@1=100              # instant rollback: everything to v1
    loopml endpoints traffic prod churn@1=50 churn@2=50    # an explicit split (must sum to 100)

Deployed models not named get 0, except in the canary form (named shares below 100 in total),
where the remaining points are shared among the others in proportion to their current traffic.
"""

from __future__ import annotations

import math
from typing import Any

import typer

from loopml.cli._common import (
    JSON,
    LOCATION,
    PROJECT,
    cli_errors,
    fail,
    make_client,
    print_json,
    print_table,
    short,
)


def parse_assignments(items: list[str]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for item in items:
        key, sep, value = item.rpartition("=")
        if not sep or not key:
            fail(f"{item!r} must look like MODEL=PERCENT (e.g. churn@2=10)")
        try:
            pct = int(value.rstrip("%"))
        except ValueError:
            fail(f"{item!r}: the percentage must be a whole number")
        if not 0 <= pct <= 100:
            fail(f"{item!r}: the percentage must be between 0 and 100")
        out.append((key, pct))
    return out


def resolve_deployed(ref: str, deployed: list[dict[str, Any]], alias_version: Any) -> str:
    """The deployed model id a MODEL argument names on this endpoint."""
    ids = {d["id"] for d in deployed}
    if ref in ids:
        return ref
    model_id, _, version = ref.partition("@")
    mine = [d for d in deployed if short(d.get("model")) == model_id]
    if not mine:
        names = ", ".join(f"{short(d.get('model'))}@{d.get('modelVersionId')} ({d['id']})" for d in deployed)
        fail(f"{ref!r} is not deployed on this endpoint (deployed: {names or 'nothing'})")
    if version and not version.isdigit():
        version = str(alias_version(f"{model_id}@{version}"))
    if version:
        mine = [d for d in mine if str(d.get("modelVersionId")) == version]
    if len(mine) != 1:
        what = "no deployed version" if not mine else "several deployed versions"
        fail(f"{ref!r} matches {what} on this endpoint; name it as model@version or by deployed model id")
    return str(mine[0]["id"])


def new_split(current: dict[str, int], named: dict[str, int], all_ids: list[str]) -> dict[str, int]:
    """Explicit split when the named shares total 100; otherwise a canary over the others."""
    total = sum(named.values())
    if total == 100:
        return {i: named.get(i, 0) for i in all_ids}
    if total > 100:
        fail(f"the percentages add up to {total}; they must total 100")
    others = [i for i in all_ids if i not in named]
    if not others:
        fail(f"the percentages add up to {total}; name every deployed model so they total 100")
    left = 100 - total
    weights = {i: current.get(i, 0) for i in others}
    if sum(weights.values()) == 0:
        weights = dict.fromkeys(others, 1)
    wsum = sum(weights.values())
    split = {i: math.floor(weights[i] * left / wsum) for i in others}
    short_by = left - sum(split.values())
    for i in sorted(others, key=lambda k: -weights[k])[:short_by]:
        split[i] += 1
    split.update(named)
    return {i: split.get(i, 0) for i in all_ids}


def traffic(
    endpoint: str = typer.Argument(..., help="Endpoint id or resource name."),
    assignments: list[str] = typer.Argument(None, help="MODEL=PERCENT pairs; none shows the current split."),
    project: str = PROJECT,
    location: str = LOCATION,
    as_json: bool = JSON,
) -> None:
    """Show or set the traffic split (canary: `churn@2=10`; rollback: `churn@1=100`)."""
    with cli_errors():
        client = make_client(project, location)
        ep = client.get_endpoint(endpoint)
        deployed = list(ep.get("deployedModels") or [])
        current = {k: int(v) for k, v in (ep.get("trafficSplit") or {}).items()}
        if assignments:
            named: dict[str, int] = {}
            for ref, pct in parse_assignments(assignments):
                dm_id = resolve_deployed(ref, deployed, lambda r: client.get_model(r).get("versionId"))
                named[dm_id] = pct
            split = new_split(current, named, [d["id"] for d in deployed])
            ep = client.set_traffic(endpoint, split)
            current = {k: int(v) for k, v in (ep.get("trafficSplit") or {}).items()}
    if as_json:
        print_json({"name": ep.get("name"), "trafficSplit": current})
        return
    rows = [
        {
            "id": d["id"],
            "model": f"{short(d.get('model'))}@{d.get('modelVersionId')}",
            "name": d.get("displayName", ""),
            "pct": current.get(d["id"], 0),
        }
        for d in deployed
    ]
    print_table(
        rows,
        [("DEPLOYED MODEL", "id"), ("MODEL", "model"), ("DISPLAY NAME", "name"), ("TRAFFIC %", "pct")],
        title=f"traffic of {short(ep.get('name'))}",
    )


def replicas(
    endpoint: str = typer.Argument(..., help="Endpoint id or resource name."),
    project: str = PROJECT,
    location: str = LOCATION,
    as_json: bool = JSON,
) -> None:
    """Show the replicas of every deployed model: state, pid, restarts, in flight, log file."""
    with cli_errors():
        client = make_client(project, location)
        ep = client.get_endpoint(endpoint)
        name = str(ep.get("name"))
        statuses = [
            client.json("GET", f"/v1/{name}/deployedModels/{d['id']}/replicas")
            for d in ep.get("deployedModels") or []
        ]
    if as_json:
        print_json(statuses)
        return
    rows = [{"dm": s["deployedModelId"], **r} for s in statuses for r in s.get("replicas", [])]
    print_table(
        rows,
        [
            ("DEPLOYED MODEL", "dm"),
            ("REPLICA", "id"),
            ("KIND", "kind"),
            ("STATE", "state"),
            ("PID", "pid"),
            ("RESTARTS", "restarts"),
            ("IN FLIGHT", "inflight"),
            ("SERVED", "served"),
            ("LOG", "log"),
        ],
        title=f"replicas of {short(name)}",
    )
