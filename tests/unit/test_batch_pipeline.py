"""Chunk plans and the predict → write → record pipeline of batch jobs."""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import threading
from collections.abc import Iterator
from typing import cast

import pytest

from loopml.serving.batch import pipeline
from loopml.serving.batch.pipeline import chunk_bounds, drive
from loopml.serving.batch.worker import ChunkOutcome, ChunkTask


@pytest.mark.parametrize(
    ("total", "rows", "ramp", "expected"),
    [
        (0, 8, False, [(0, 0)]),
        (0, 8, True, [(0, 0)]),
        (20, 8, False, [(0, 8), (8, 8), (16, 4)]),
        (20, 8, True, [(0, 1), (1, 2), (3, 4), (7, 8), (15, 5)]),
        (2, 8, True, [(0, 1), (1, 1)]),
        (5, 1, True, [(0, 1), (1, 1), (2, 1), (3, 1), (4, 1)]),
    ],
)
def test_chunk_bounds_cover_every_row_once(
    total: int, rows: int, ramp: bool, expected: list[tuple[int, int]]
) -> None:
    bounds = chunk_bounds(total, rows, ramp)
    assert bounds == expected
    assert sum(length for _, length in bounds) == total


def test_large_plan_is_contiguous_and_deterministic() -> None:
    bounds = chunk_bounds(5_000_000, 524_288, True)
    assert bounds == chunk_bounds(5_000_000, 524_288, True)
    assert [length for _, length in bounds[:4]] == [65_536, 131_072, 262_144, 524_288]
    assert all(a + n == b for (a, n), (b, _) in itertools.pairwise(bounds))
    assert bounds[-1][0] + bounds[-1][1] == 5_000_000


def _tasks(n: int) -> Iterator[ChunkTask]:
    return cast(Iterator[ChunkTask], iter(range(n)))  # _fake_run takes the chunk index itself


def _fake_run(task: int) -> ChunkOutcome:
    return ChunkOutcome(index=task, successful=task + 1, failed=0, seconds=0.0)


def test_drive_appends_then_records_each_chunk_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "run_chunk", _fake_run)
    appended: list[int] = []
    recorded: list[int] = []
    lock = threading.Lock()

    def append(out: ChunkOutcome) -> None:
        with lock:
            appended.append(out.index)

    def record(out: ChunkOutcome) -> bool:
        with lock:
            assert out.index in appended  # recorded only once its rows are in place
        recorded.append(out.index)
        return False

    with cf.ThreadPoolExecutor(2) as pool, cf.ThreadPoolExecutor(1) as writer:
        result = drive(pool, _tasks(10), 2, writer, append, record, lambda: False)
    assert result == "done"
    assert sorted(appended) == sorted(recorded) == list(range(10))


def test_drive_cancel_stops_feeding_and_drains_appends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "run_chunk", _fake_run)
    appended: list[int] = []
    recorded: list[int] = []

    def record(out: ChunkOutcome) -> bool:
        recorded.append(out.index)
        return True  # cancellation was asked by the first record

    with cf.ThreadPoolExecutor(2) as pool, cf.ThreadPoolExecutor(1) as writer:
        result = drive(
            pool,
            _tasks(100),
            2,
            writer,
            lambda out: appended.append(out.index),
            record,
            lambda: False,
        )
    assert result == "cancelled"
    assert sorted(recorded) == sorted(appended)  # every append that ran is recorded
    assert len(appended) <= 4  # nothing started after the cancel


def test_drive_stop_and_append_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "run_chunk", _fake_run)
    with cf.ThreadPoolExecutor(2) as pool, cf.ThreadPoolExecutor(1) as writer:
        assert drive(pool, _tasks(100), 2, writer, lambda out: None, lambda out: False, lambda: True) is None

        def fail(out: ChunkOutcome) -> None:
            raise ValueError("disk full")

        with pytest.raises(ValueError, match="disk full"):
            drive(pool, _tasks(10), 2, writer, fail, lambda out: False, lambda: False)
