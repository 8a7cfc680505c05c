"""Which contiguous part of a global example list one process loads.

Every source gives process `i` of `n` the same slice of the same ordered global set, so the
slices of all processes are disjoint and together cover the split. Sizes differ by at most one,
the first processes taking the remainder, which is also how `tfds.even_splits` divides a split;
a multi-host run therefore sees the same partition whatever the source.
"""
from __future__ import annotations


def process_bounds(num_examples: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[start, stop) of process `process_index` among `process_count` over `num_examples` items."""
    check_process(process_index, process_count)
    per_process, remainder = divmod(num_examples, process_count)
    start = per_process * process_index + min(process_index, remainder)
    stop = start + per_process + (1 if process_index < remainder else 0)
    return start, stop


def process_suffix(process_index: int, process_count: int) -> str:
    """Name suffix that keeps per-process slices apart in caches ("" for a single process)."""
    check_process(process_index, process_count)
    return "" if process_count == 1 else f"-proc{process_index}of{process_count}"


def check_process(process_index: int, process_count: int) -> None:
    """Rejects an impossible (index, count) pair early, before any data is read."""
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")
