"""The run's own time for each phase after "Start?", written to OUT/timings.json beside the plan's
estimate (benchmarks/time_estimate.py compares the two)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

from finetuner.time_plan import TimeEstimate

TIMINGS_FILE = "timings.json"


class PhaseClock:
    """Wall time of each phase after "Start?", written to OUT/timings.json beside the plan's estimate
    (benchmarks/time_estimate.py compares the two)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str):
        clock = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - clock

    def move(self, source: str, target: str, seconds: float) -> None:
        """`seconds` of phase `source` belong to `target` (training, measured inside the training stage)."""
        self.seconds[source] = max(0.0, self.seconds.get(source, 0.0) - seconds)
        self.seconds[target] = self.seconds.get(target, 0.0) + seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def write(self, out: Path, plan: TimeEstimate) -> Path:
        from finetuner import artifacts

        measured = {name: round(seconds, 1) for name, seconds in self.seconds.items() if seconds >= 0.05}
        return artifacts.write_json(out / TIMINGS_FILE, {"estimate": plan.as_dict(),
                                                        "measured": {"phases": measured,
                                                                     "total_s": round(self.elapsed(), 1)}})
