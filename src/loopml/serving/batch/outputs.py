"""Chunk outputs: JSONL shards in storage, or Arrow staging files loaded into the warehouse.

Every chunk's output has a deterministic name derived from its index, and is written to a
temporary file, flushed and renamed into place before the chunk is recorded as committed. A chunk
recomputed after a crash therefore replaces, never duplicates, what a crashed attempt left.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from loopml.serving.batch.chunk import ERROR_CODE_INVALID, ChunkResult, InstanceOptions, Prepared

_ORJSON = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
ERROR_TYPE = pa.struct([("code", pa.int64()), ("message", pa.string())])


def atomic_write(path: Path, data: bytes | pa.Table, *, fsync: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if isinstance(data, pa.Table):
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, data.schema) as writer:
            writer.write_table(data, max_chunksize=1 << 20)
    else:
        tmp.write_bytes(data)
    if fsync:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    os.replace(tmp, path)


def read_arrow(path: Path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def _pred_list(result: ChunkResult) -> list[Any]:
    preds = result.predictions
    return preds.tolist() if isinstance(preds, np.ndarray) else list(preds)


def jsonl_outputs(prepared: Prepared, result: ChunkResult, opts: InstanceOptions) -> tuple[bytes, bytes]:
    """(predictions lines, error lines) for one chunk."""
    object_rows = opts.effective_type == "object"
    preds = _pred_list(result)
    out = bytearray()
    if opts.key_field:
        assert prepared.keys is not None
        keys = prepared.keys
        for pos, pred in zip(result.ok.tolist(), preds, strict=True):
            out += orjson.dumps({"key": keys[pos], "prediction": pred}, option=_ORJSON)
            out += b"\n"
    else:
        instances = prepared.instances(result.ok, object_rows)
        for instance, pred in zip(instances, preds, strict=True):
            out += orjson.dumps({"instance": instance, "prediction": pred}, option=_ORJSON)
            out += b"\n"
    err = bytearray()
    for pos in sorted(result.errors):
        instance = _error_instance(prepared, pos, object_rows)
        record: dict[str, Any] = {"instance": instance}
        if opts.key_field and prepared.keys is not None and prepared.keys[pos] is not None:
            record["key"] = prepared.keys[pos]
        record["error"] = {"code": ERROR_CODE_INVALID, "message": result.errors[pos]}
        err += orjson.dumps(record, option=_ORJSON)
        err += b"\n"
    return bytes(out), bytes(err)


def _error_instance(prepared: Prepared, pos: int, object_rows: bool) -> Any:
    if prepared.raw is not None:
        return (
            prepared.values[pos]
            if prepared.values and prepared.values[pos] is not None
            else prepared.raw[pos]
        )
    return prepared.source.slice(pos, 1).to_pylist()[0] if object_rows else prepared.instance(pos, False)


def prediction_array(preds: Any) -> pa.Array:
    """An Arrow column for predictions: numbers, strings, lists of numbers; anything else as JSON text."""
    if isinstance(preds, np.ndarray):
        if preds.ndim == 1 and preds.dtype != object:
            return pa.array(preds)
        preds = preds.tolist()
    if any(isinstance(p, dict) for p in preds[:100]):
        return pa.array([orjson.dumps(p, option=_ORJSON).decode() for p in preds], pa.string())
    try:
        array = pa.array(preds)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([orjson.dumps(p, option=_ORJSON).decode() for p in preds], pa.string())
    if pa.types.is_null(array.type):
        return array.cast(pa.string())
    return array


def table_outputs(
    prepared: Prepared, result: ChunkResult, opts: InstanceOptions
) -> tuple[pa.Table, pa.Table]:
    """(predictions, errors) Arrow tables for a BigQuery destination."""
    ok_idx = pa.array(result.ok, pa.int64())
    err_pos = sorted(result.errors)
    err_idx = pa.array(np.asarray(err_pos, dtype=np.int64), pa.int64())
    preds = prediction_array(result.predictions)
    if opts.key_field:
        assert prepared.keys is not None
        keys = pa.array(prepared.keys)
        base_ok = pa.table({"key": keys.take(ok_idx)})
        base_err = pa.table({"key": keys.take(err_idx)})
    elif prepared.features is not None:
        everything = not result.errors and len(result.ok) == prepared.n
        base_ok = prepared.source if everything else prepared.source.take(ok_idx)
        base_err = prepared.source.take(err_idx)
    else:
        object_rows = opts.effective_type == "object"
        ok_inst = [
            orjson.dumps(prepared.instance(int(i), object_rows), option=_ORJSON).decode() for i in result.ok
        ]
        err_inst = [
            orjson.dumps(_error_instance(prepared, i, object_rows), option=_ORJSON).decode() for i in err_pos
        ]
        base_ok = pa.table({"instance": pa.array(ok_inst, pa.string())})
        base_err = pa.table({"instance": pa.array(err_inst, pa.string())})
    predictions = base_ok.append_column("prediction", preds)
    error_col = pa.array(
        [{"code": ERROR_CODE_INVALID, "message": result.errors[i]} for i in err_pos], ERROR_TYPE
    )
    errors = base_err.append_column("error", error_col)
    return predictions, errors
