"""Figures, their statistics, the table and the JSON."""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with p% at or below it."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(math.ceil(p / 100 * len(ordered)), 1)
    return ordered[rank - 1]


@dataclass
class Figure:
    """One row of the table: a measured quantity over ``n`` samples."""

    scenario: str
    name: str
    unit: str
    median: float
    p90: float | None = None
    p99: float | None = None
    n: int = 1
    target: str = ""
    met: bool | None = None
    note: str = ""
    samples: list[float] = field(default_factory=list)

    @classmethod
    def of(
        cls,
        scenario: str,
        name: str,
        unit: str,
        samples: Sequence[float],
        p99: bool = False,
        keep: bool = True,
    ) -> Figure:
        """Median and p90 (and p99) of ``samples``."""
        return cls(
            scenario,
            name,
            unit,
            median=percentile(samples, 50),
            p90=percentile(samples, 90) if len(samples) > 1 else None,
            p99=percentile(samples, 99) if p99 else None,
            n=len(samples),
            samples=[round(s, 6) for s in samples] if keep else [],
        )

    def check(self, target: str, met: bool) -> Figure:
        self.target, self.met = target, met
        return self


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(memory / (1 << 30), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def show(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit in ("ms", "s") and abs(value) < 10:
        text = f"{value:.2f}"
    elif abs(value) < 100:
        text = f"{value:.1f}"
    else:
        text = f"{value:,.0f}"
    return f"{text} {unit}"


def table(figures: list[Figure], info: dict[str, Any]) -> str:
    rows = [("scenario", "figure", "median", "p90", "p99", "n", "target", "")]
    for f in figures:
        verdict = {True: "met", False: "NOT MET", None: ""}[f.met]
        rows.append(
            (
                f.scenario,
                f.name,
                show(f.median, f.unit),
                show(f.p90, f.unit),
                show(f.p99, f.unit),
                str(f.n),
                f.target,
                verdict,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {2, 3, 4, 5}
    lines = []
    for k, row in enumerate(rows):
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    head = (
        f"machine: {info['nproc']} cores, {info['cpu']}, {info['memory_gib']} GiB RAM,"
        f" Linux {info['kernel']}, Python {info['python']}"
    )
    loads = info.get("load_average_at_start") or {}
    if loads:
        values = sorted(loads.values())
        head += (
            f"\nload average (1 min) as scenarios began: {values[0]:.2f} to"
            f" {values[-1]:.2f} (the benchmark's own load included)"
        )
    notes = [f"  {f.scenario}/{f.name}: {f.note}" for f in figures if f.note]
    return "\n".join([head, "", *lines, *(["", "notes:", *notes] if notes else [])])


def write_json(
    path: Path, figures: list[Figure], info: dict[str, Any], extra: dict[str, Any]
) -> None:
    document = {
        "machine": info,
        **extra,
        "figures": [asdict(f) for f in figures],
    }
    path.write_text(json.dumps(document, indent=2) + "\n")
