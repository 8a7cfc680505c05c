"""Numbers into reports: mean and spread over seeds, and Markdown tables.

Reports state numbers that a reader can trace to files, so formatting is kept in one place and
every formatter is a plain function of a number.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def mean_std(values: Sequence[float]) -> dict[str, float]:
    """{"mean", "std", "n"} of the finite values; std is the sample standard deviation (ddof=1),
    0 for a single value; NaN mean for none."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return {"mean": float(np.mean(finite)), "std": std, "n": len(finite)}


def percent(value: float) -> str:
    """0.8534 -> "85.3%"."""
    return "n/a" if value is None or not math.isfinite(value) else f"{100.0 * value:.1f}%"


def decimal(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def with_spread(stats: dict[str, float], formatter=percent) -> str:
    """"85.3% ± 1.2%" over several seeds, "85.3%" for one."""
    if stats["n"] > 1:
        return f"{formatter(stats['mean'])} ± {formatter(stats['std'])}"
    return formatter(stats["mean"])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub Markdown table; every row must have one cell per header."""
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {list(row)} has {len(row)} cells for {len(headers)} headers")
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
