"""The chunk pipeline of a batch job: predict workers, one warehouse writer, the recorder.

Three stages overlap: a pool of workers predicts chunks (numpy/sklearn release the GIL), a single
writer thread appends each predicted chunk to the BigQuery destination (one DuckDB transaction per
chunk, with its cursor row), and the scheduler thread records every appended chunk in the metadata
store (progress, counters, cancellation). The writer is the usual bottleneck for fast models, so it
never waits for the metadata store, and the first chunks are small (`chunk_bounds`) so that it
starts writing early instead of waiting for a full chunk to be read and predicted.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from loopml.serving.batch.worker import ChunkOutcome, ChunkTask, run_chunk

RAMP_SHIFTS = (3, 2, 1)  # first chunks: 1/8, 1/4, 1/2 of the chunk size


def chunk_bounds(total: int, chunk_rows: int, ramp: bool = False) -> list[tuple[int, int]]:
    """(start, length) of every chunk of a `total`-row input; an empty input is one empty chunk.

    With `ramp`, the first chunks are 1/8, 1/4 and 1/2 of `chunk_rows`, so the first output rows
    are written while the next chunks are still being predicted. The plan depends only on its
    arguments (stored with the job), so a resumed job cuts exactly the same chunks.
    """
    chunk_rows = max(1, chunk_rows)
    sizes = [max(1, chunk_rows >> s) for s in RAMP_SHIFTS] if ramp else []
    bounds: list[tuple[int, int]] = []
    start = 0
    while start < total:
        size = sizes[len(bounds)] if len(bounds) < len(sizes) else chunk_rows
        length = min(size, total - start)
        bounds.append((start, length))
        start += length
    return bounds or [(0, 0)]


Record = Callable[[ChunkOutcome], bool]
"""Records a chunk whose outputs are in place; returns True once the job's cancellation was asked."""


def drive(
    pool: cf.Executor,
    tasks: Iterator[ChunkTask],
    workers: int,
    writer: cf.Executor | None,
    append: Callable[[ChunkOutcome], None] | None,
    record: Record,
    stopping: Callable[[], bool],
    pause_s: float = 0.0,
) -> str | None:
    """Run every task; "done", "cancelled", or None when stopping (the job resumes later).

    With a warehouse destination (`writer` and `append` given) a predicted chunk is appended by the
    writer, in completion order, and recorded once appended. At most `2 × workers` chunks are in
    flight (predicting or waiting to be written), which bounds memory. On cancel or stop no new
    chunk is started, but the appends already under way finish and are recorded.
    """
    predicting: set[cf.Future[ChunkOutcome]] = set()
    writing: deque[tuple[cf.Future[None], ChunkOutcome]] = deque()
    result: str | None = "done"
    feeding, exhausted = True, False

    def recorded(out: ChunkOutcome) -> None:
        nonlocal result, feeding
        if record(out) and result == "done":
            result, feeding = "cancelled", False
        if pause_s > 0:
            time.sleep(pause_s)

    try:
        while True:
            while feeding and not exhausted and len(predicting) + len(writing) < workers * 2:
                task = next(tasks, None)
                if task is None:
                    exhausted = True
                else:
                    predicting.add(pool.submit(run_chunk, task))
            waiting: set[cf.Future[Any]] = set(predicting) if feeding else set()
            waiting.update(future for future, _ in writing)
            if not waiting:
                return result
            done, _ = cf.wait(waiting, return_when=cf.FIRST_COMPLETED)
            for future in [f for f in predicting if f in done]:
                if not feeding:  # cancelled meanwhile: start no more appends
                    break
                predicting.discard(future)
                out = future.result()
                if writer is not None and append is not None:
                    writing.append((writer.submit(append, out), out))
                else:  # the worker wrote the chunk's files itself
                    recorded(out)
            while writing and writing[0][0].done():
                appended, out = writing.popleft()
                appended.result()  # a failed append fails the job
                recorded(out)
            if feeding and stopping():
                result, feeding = None, False
    finally:
        for appending, _ in writing:  # leave no append of this job running behind it
            appending.cancel()
        cf.wait([appending for appending, _ in writing])
