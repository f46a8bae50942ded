"""Durable ingest: `POST /ingest/{topic}` (acknowledged only after fsync) vs DuckDB's own Arrow append.

The peer is DuckDB appending the same rows (the message log's columns: sequence, topic, publish
time, the event JSON) from Arrow batches into a table in a file, one committed transaction per
batch — the rate a durable append can reach with no HTTP, no parsing and no group commit.
loopml is measured with wrk on loopback: single events per request at concurrency 64, and JSON
arrays of 100 and 1,000 events. Every request is answered only after its events are committed
(SQLite WAL, synchronous=FULL); concurrent requests share commits (group commit).
"""

from __future__ import annotations

import json
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

CASES = (("single", 1, 64), ("array100", 100, 16), ("array1000", 1000, 4))


def duckdb_rate(sample: list[bytes], batch: int, seconds: float, work: Path) -> float:
    con = duckdb.connect(str(work / f"peer-{batch}.duckdb"))
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
    return seq / elapsed


def run(quick: bool = False) -> dict[str, Any]:
    common.ensure_wrk()
    seconds = 4 if quick else 12
    sample = [json.dumps(e, separators=(",", ":")) for e in islice(events(1), 1000)]
    raw = [s.encode() for s in sample]
    with tempfile.TemporaryDirectory(prefix="loopml-ingest-bench-") as tmp:
        work = Path(tmp)
        peer = {f"batch{b}": duckdb_rate(raw, b, seconds, work) for b in (1, 100, 1000, 10000)}
        port = common.free_port()
        env = {"LOOPML_HOME": str(work / "home"), "LOOPML_PORT": str(port), "LOOPML_LOG_LEVEL": "WARNING"}
        proc = common.start([sys.executable, "-m", "loopml", "server"], env=env, log=work / "server.log")
        url = f"http://127.0.0.1:{port}"
        try:
            common.wait_http(f"{url}/healthz", proc=proc)
            httpx.put(f"{url}/v1/projects/local/topics/bench-topic", timeout=30).raise_for_status()
            loopml: dict[str, Any] = {}
            for name, batch, conns in CASES:
                body = sample[0] if batch == 1 else "[" + ",".join(sample[:batch]) + "]"
                res = common.wrk(
                    f"{url}/ingest/bench-topic/json", body, connections=conns, seconds=seconds, workdir=work
                )
                loopml[name] = {
                    "events_per_s": round(res.rps * batch, 1),
                    "requests_per_s": round(res.rps, 1),
                    "p50_ms": res.p50_ms,
                    "p99_ms": res.p99_ms,
                    "errors": res.errors,
                    "connections": conns,
                }
            stored = httpx.get(f"{url}/v1/projects/local/topics/bench-topic", timeout=30).status_code == 200
        finally:
            common.stop(proc)
    ref = peer["batch1000"]
    summary = {name: round(v["events_per_s"] / ref, 3) for name, v in loopml.items()}
    best = {name: round(v["events_per_s"] / peer["batch10000"], 3) for name, v in loopml.items()}
    return {
        "seconds_per_case": seconds,
        "event_bytes": len(raw[0]),
        "duckdb_arrow_append_rows_per_s": {k: round(v, 1) for k, v in peer.items()},
        "loopml": loopml,
        "summary": {
            "ratio_to_duckdb_batch1000": summary,
            "ratio_to_duckdb_batch10000": best,
            "target": 0.25,
            "topic_ok": stored,
        },
    }


def markdown(data: dict[str, Any]) -> str:
    peer = data["duckdb_arrow_append_rows_per_s"]
    lines = [
        "Durable ingest through `POST /ingest/{topic}/json` (answered after fsync), vs DuckDB appending "
        f"the same rows (~{data['event_bytes']} B events) from Arrow, one committed transaction per batch.",
        "",
        "| writer | events/s | p50 ms | p99 ms | ratio to DuckDB (1,000-row batches) |",
        "|---|---:|---:|---:|---:|",
    ]
    for batch in ("batch1", "batch100", "batch1000", "batch10000"):
        ratio = peer[batch] / peer["batch1000"]
        lines.append(f"| DuckDB Arrow append, {batch[5:]} rows/txn | {peer[batch]:,.0f} | | | {ratio:.2f} |")
    for name, v in data["loopml"].items():
        label = {"single": "1 event/request", "array100": "arrays of 100", "array1000": "arrays of 1,000"}[
            name
        ]
        ratio = data["summary"]["ratio_to_duckdb_batch1000"][name]
        lines.append(
            f"| loopml `/ingest`, {label}, {v['connections']} connections | {v['events_per_s']:,.0f} | "
            f"{v['p50_ms']:.1f} | {v['p99_ms']:.1f} | {ratio:.2f} |"
        )
    lines.append("")
    best = data["summary"]["ratio_to_duckdb_batch10000"]
    lines.append(
        "Target: durable `/ingest` at least 0.25 of DuckDB's batched Arrow append rate. Against DuckDB's "
        f"10,000-row batches the ratios are {best['array1000']:.2f} (arrays of 1,000), "
        f"{best['array100']:.2f} (arrays of 100) and {best['single']:.3f} (single events)."
    )
    return "\n".join(lines)
