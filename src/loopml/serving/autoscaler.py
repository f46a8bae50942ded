"""Autoscaling with Vertex semantics (vertex-api.md §10).

Every cycle each metric recommends `ceil(replicas × utilisation / target)`; the replica count
becomes the maximum recommendation over the stabilisation window, clamped to [min, max]. Scale-up
is therefore fast and scale-down waits for the window. Metrics:

- `aiplatform.googleapis.com/prediction/online/cpu/utilization` (default, target 60): mean CPU
  use of the replica processes, in percent of one core (a replica is single-threaded);
- `aiplatform.googleapis.com/prediction/online/request_count`: requests per minute per replica
  (its target is a request rate, not a percentage).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

CPU_METRIC = "aiplatform.googleapis.com/prediction/online/cpu/utilization"
REQUEST_COUNT_METRIC = "aiplatform.googleapis.com/prediction/online/request_count"
DEFAULT_TARGET = 60.0


def recommend(replicas: int, utilisation: float, target: float) -> int:
    """Replicas one metric asks for: ceil(replicas × utilisation / target), at least 1."""
    if target <= 0:
        raise ValueError("target utilisation must be positive")
    if replicas <= 0:
        return 1
    # Round away float noise first (e.g. 2 × 30 / 60 must give exactly 1).
    value = round(replicas * utilisation / target, 9)
    return max(1, math.ceil(value))


def clamp(n: int, low: int, high: int) -> int:
    return max(low, min(high, n))


def metric_targets(specs: list[dict[str, Any]]) -> dict[str, float]:
    """Metric name → target from `autoscalingMetricSpecs`; CPU at 60 when none is given."""
    targets: dict[str, float] = {}
    for spec in specs or []:
        name = str(spec.get("metricName", ""))
        if name:
            target = spec.get("target")
            targets[name] = float(target) if target not in (None, 0, "") else DEFAULT_TARGET
    if not targets:
        targets[CPU_METRIC] = DEFAULT_TARGET
    return targets


@dataclass
class Decision:
    current: int
    recommendations: dict[str, int]
    inputs: dict[str, float]
    window_max: int
    desired: int


@dataclass
class Stabiliser:
    """The maximum recommendation over the last `window_s` seconds."""

    window_s: float
    history: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, recommendation: int, now: float | None = None) -> int:
        t = time.monotonic() if now is None else now
        self.history.append((t, recommendation))
        while self.history and self.history[0][0] < t - self.window_s:
            self.history.popleft()
        return max(r for _, r in self.history)


def decide(
    current: int,
    inputs: dict[str, float],
    targets: dict[str, float],
    stabiliser: Stabiliser,
    min_replicas: int,
    max_replicas: int,
    now: float | None = None,
) -> Decision:
    """One cycle: per-metric recommendations, window maximum, clamp."""
    recs = {name: recommend(current, inputs.get(name, 0.0), target) for name, target in targets.items()}
    rec = max(recs.values()) if recs else current
    window_max = stabiliser.add(rec, now)
    desired = clamp(window_max, max(1, min_replicas), max(max_replicas, min_replicas, 1))
    return Decision(current, recs, inputs, window_max, desired)
