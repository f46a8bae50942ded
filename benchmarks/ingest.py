"""Durable ingest: `POST /ingest/{topic}` and `:publish` (acknowledged only after fsync) vs DuckDB's
own Arrow append of the same rows.

The peer is DuckDB appending the same events (the message log's columns: sequence, topic,
publish time, the event JSON) from Arrow batches into a table in a file, one committed
transaction per batch of 1, 100, 1,000 and 10,000 rows — the rate a durable append can reach
with no HTTP, no parsing and no group commit. loopml is measured with wrk on loopback against a
fresh server whose topic has no subscription (so nothing else competes for the message log):
single events per request at 64 connections, JSON arrays of 100, 1,000 and 10,000 events, and
Pub/Sub `:publish` requests of 1 and 1,000 base64 messages. Every request is answered only after
its events are committed (SQLite WAL, synchronous=FULL); concurrent requests share commits.

Each case is compared with DuckDB at the same rows per call (one event per request vs one row
per transaction, an array of 1,000 vs a 1,000-row transaction) and with DuckDB's best batch
size. Peer and loopml runs alternate for `rounds` rounds; the figures are medians.
"""

from __future__ import annotations

import base64
import json
import shutil
import statistics
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pyarrow as pa

from benchmarks import common
from loopml.ingest.synth import events

BATCHES = (1, 100, 1000, 10000)
# name, events per request, connections, route ("ingest" = /ingest/{t}/json, "publish" = :publish)
CASES = (
    ("single", 1, 64, "ingest"),
    ("array100", 100, 16, "ingest"),
    ("array1000", 1000, 4, "ingest"),
    ("array10000", 10000, 4, "ingest"),
    ("publish1", 1, 64, "publish"),
    ("publish1000", 1000, 4, "publish"),
)
LABELS = {
    "single": "`/ingest`, 1 event/request",
    "array100": "`/ingest`, arrays of 100",
    "array1000": "`/ingest`, arrays of 1,000",
    "array10000": "`/ingest`, arrays of 10,000",
    "publish1": "`:publish`, 1 message/request",
    "publish1000": "`:publish`, 1,000 messages/request",
}


def duckdb_rate(sample: list[bytes], batch: int, seconds: float, work: Path) -> float:
    path = work / f"peer-{batch}.duckdb"
    path.unlink(missing_ok=True)
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE messages (seq BIGINT, topic_id BIGINT, publish_us BIGINT, data BLOB)")
    seq = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        rows = [sample[(seq + i) % len(sample)] for i in range(batch)]
        now = int(time.time() * 1e6)
        arrow = pa.table(
            {
                "seq": pa.array(range(seq, seq + batch), pa.int64()),
                "topic_id": pa.array([1] * batch, pa.int64()),
                "publish_us": pa.array([now] * batch, pa.int64()),
                "data": pa.array(rows, pa.binary()),
            }
        )
        con.register("batch_rows", arrow)
        con.execute("INSERT INTO messages SELECT * FROM batch_rows")  # autocommit: one durable txn
        con.unregister("batch_rows")
        seq += batch
    elapsed = time.perf_counter() - start
    con.close()
    path.unlink(missing_ok=True)
    return seq / elapsed


def _body(sample: list[str], batch: int, route: str) -> str:
    if route == "publish":
        return json.dumps(
            {"messages": [{"data": base64.b64encode(s.encode()).decode()} for s in sample[:batch]]}
        )
    return sample[0] if batch == 1 else "[" + ",".join(sample[:batch]) + "]"


def _loopml_round(sample: list[str], seconds: int, work: Path) -> dict[str, dict[str, Any]]:
    port = common.free_port()
    env = {"LOOPML_HOME": str(work / "home"), "LOOPML_PORT": str(port), "LOOPML_LOG_LEVEL": "WARNING"}
    proc = common.start([sys.executable, "-m", "loopml", "server"], env=env, log=work / "server.log")
    url = f"http://127.0.0.1:{port}"
    out: dict[str, dict[str, Any]] = {}
    try:
        common.wait_http(f"{url}/healthz", proc=proc)
        httpx.put(f"{url}/v1/projects/local/topics/bench-topic", timeout=30).raise_for_status()
        subs = httpx.get(f"{url}/v1/projects/local/topics/bench-topic/subscriptions", timeout=30).json()
        assert not subs.get("subscriptions"), "the benchmark topic must have no subscription"
        for name, batch, conns, route in CASES:
            target = (
                f"{url}/v1/projects/local/topics/bench-topic:publish"
                if route == "publish"
                else f"{url}/ingest/bench-topic/json"
            )
            cpu = common.tree_cpu_seconds(proc.pid)
            res = common.wrk(
                target, _body(sample, batch, route), connections=conns, seconds=seconds, workdir=work
            )
            cpu = common.tree_cpu_seconds(proc.pid) - cpu
            events_total = res.requests * batch
            out[name] = {
                "events_per_s": res.rps * batch,
                "requests_per_s": res.rps,
                "p50_ms": res.p50_ms,
                "p99_ms": res.p99_ms,
                "errors": res.errors,
                "server_cpu_ms_per_1k_events": 1e6 * cpu / events_total if events_total else float("nan"),
            }
    finally:
        common.stop(proc)
        shutil.rmtree(work / "home", ignore_errors=True)  # a round writes GBs of log
    return out


def run(quick: bool = False) -> dict[str, Any]:
    common.ensure_wrk()
    seconds = 3 if quick else 8
    rounds = 1 if quick else 3
    sample = [json.dumps(e, separators=(",", ":")) for e in islice(events(1), 10000)]
    raw = [s.encode() for s in sample]
    peer_runs: dict[int, list[float]] = {b: [] for b in BATCHES}
    loopml_runs: list[dict[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory(prefix="loopml-ingest-bench-") as tmp:
        for r in range(rounds):
            work = Path(tmp) / f"round{r}"
            work.mkdir()
            for b in BATCHES:
                peer_runs[b].append(duckdb_rate(raw, b, seconds, work))
            loopml_runs.append(_loopml_round(sample, seconds, work))
    peer = {f"batch{b}": round(statistics.median(v), 1) for b, v in peer_runs.items()}
    best_key = max(peer, key=lambda k: peer[k])
    loopml: dict[str, Any] = {}
    same: dict[str, float] = {}
    best: dict[str, float] = {}
    for name, batch, conns, route in CASES:
        runs = [r[name] for r in loopml_runs]
        med = {k: round(common.median([x[k] for x in runs]), 2) for k in runs[0]}
        med["events_per_s"] = round(med["events_per_s"], 1)
        loopml[name] = {
            **med,
            "errors": sum(x["errors"] for x in runs),
            "connections": conns,
            "events_per_request": batch,
            "route": route,
            "events_per_s_runs": [round(x["events_per_s"], 1) for x in runs],
        }
        same[name] = round(med["events_per_s"] / peer[f"batch{batch}"], 3)
        best[name] = round(med["events_per_s"] / peer[best_key], 3)
    return {
        "seconds_per_case": seconds,
        "rounds": rounds,
        "event_bytes_mean": round(sum(map(len, raw)) / len(raw), 1),
        "duckdb_arrow_append_rows_per_s": peer,
        "duckdb_arrow_append_rows_per_s_runs": {
            f"batch{b}": [round(x, 1) for x in v] for b, v in peer_runs.items()
        },
        "loopml": loopml,
        "summary": {
            "duckdb_best": best_key,
            "ratio_to_duckdb_same_batch": same,
            "ratio_to_duckdb_best": best,
            "target": 0.25,
            "meets_target_vs_best": {k: v >= 0.25 for k, v in best.items()},
        },
    }


def markdown(data: dict[str, Any]) -> str:
    peer = data["duckdb_arrow_append_rows_per_s"]
    summary = data["summary"]
    best_key = summary["duckdb_best"]
    lines = [
        "Durable ingest (answered after fsync) vs DuckDB appending the same events "
        f"(~{data['event_bytes_mean']:.0f} B of JSON each) from Arrow, one committed transaction per batch. "
        f"Medians of {data['rounds']} alternating rounds of {data['seconds_per_case']} s per case; the "
        "benchmark topic has no subscription.",
        "",
        "| writer | events/s | p50 ms | p99 ms | server CPU ms / 1k events | ratio to DuckDB, same rows per call "
        "| ratio to DuckDB's best |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for batch in BATCHES:
        key = f"batch{batch}"
        lines.append(
            f"| DuckDB Arrow append, {batch:,} rows/txn | {peer[key]:,.0f} | | | | 1 | {peer[key] / peer[best_key]:.3f} |"
        )
    for name, v in data["loopml"].items():
        lines.append(
            f"| loopml {LABELS[name]}, {v['connections']} connections | {v['events_per_s']:,.0f} | "
            f"{v['p50_ms']:.1f} | {v['p99_ms']:.1f} | {v['server_cpu_ms_per_1k_events']:.0f} | "
            f"{summary['ratio_to_duckdb_same_batch'][name]:.2f} | {summary['ratio_to_duckdb_best'][name]:.3f} |"
        )
    met = [LABELS[k] for k, ok in summary["meets_target_vs_best"].items() if ok]
    lines += [
        "",
        f"Target: durable ingest at least {summary['target']} of DuckDB's best batched Arrow append rate "
        f"({best_key[5:]} rows/txn here). Met by: {', '.join(met) if met else 'none'}.",
    ]
    return "\n".join(lines)
