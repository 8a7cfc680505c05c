"""Running a list of figures, ours beside the PyTorch peer's, each measurement in its own process,
and printing them as one table. cpu.py and gpu.py are the two lists.

A measurement is a job (a JSON dict) run as `python benchmarks/suite.py --job=JSON`, which prints
one JSON line: per_s (images or texts per second), seconds (per step or chain), first_s (the
first call, compilation included), flops (ours, by XLA's cost analysis), peak_bytes (device
memory, where the device reports it). Separate processes keep each figure's peak memory and
compile time its own, and keep JAX and PyTorch from sharing one device's memory.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


@dataclasses.dataclass
class Figure:
    """One row: our job and the peer's jobs (by mode, e.g. eager_bf16) measuring the same thing."""

    name: str
    unit: str
    ours: dict
    peers: dict[str, dict]
    target: str = ""
    results: dict[str, dict] = dataclasses.field(default_factory=dict)


def run_job(job: dict, timeout: float, environment: dict[str, str | None] | None = None) -> dict:
    """Runs one measurement in a fresh process; {'error': ...} if it fails. `environment` sets
    (or, with None, removes) variables for that process only."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH", "")])))
    for name, value in (environment or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    try:
        done = subprocess.run([sys.executable, os.path.abspath(__file__), f"--job={json.dumps(job)}"],
                              capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": " | ".join(tail) or f"exit status {done.returncode}"}
    return json.loads(lines[-1])


def _measure(job: dict) -> dict:
    """One measurement by our side (workloads.py) or the peer's (torch_side.py)."""
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    if job["side"] == "ours":
        from workloads import run
    else:
        from torch_side import run
    return run(job)


def run_job_here(job: dict) -> dict:
    """Runs one measurement in this process (a smoke run: the code paths, not the figures)."""
    try:
        return _measure(job)
    except Exception as error:  # reported in the table like a failed process
        return {"error": f"{type(error).__name__}: {error}"}


def run_figures(figures: list[Figure], timeout: float, log=print, in_process: bool = False) -> None:
    """Fills each figure's results. `in_process` runs every job here instead of in a process of
    its own: quicker (no interpreter, JAX and PyTorch start per job) but with shared memory and
    threads, so only for smoke runs."""
    for figure in figures:
        for label, job in [("ours", figure.ours), *figure.peers.items()]:
            figure.results[label] = result = run_job_here(job) if in_process else run_job(job, timeout)
            log(json.dumps({"figure": figure.name, "side": label, **result}), flush=True)


def environment() -> dict[str, str]:
    """Date, machine and versions, for the table's heading."""
    versions = {}
    for name in ("jax", "jaxlib", "flax", "optax", "torch", "transformers"):
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001  (a missing package is reported, not fatal)
            versions[name] = "absent"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "cpu": f"{cpu}, {os.cpu_count()} cores",
            "python": platform.python_version(), **versions}


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def table(figures: list[Figure], flops_unit: str = "TFLOP/s") -> str:
    """A markdown table: one row per figure, ours beside each peer mode."""
    scale = 1e12 if flops_unit == "TFLOP/s" else 1e9
    modes = list(dict.fromkeys(mode for f in figures for mode in f.peers))
    head = (["figure", "ours"] + [f"peer {m}" for m in modes] + [f"ours / {m}" for m in modes]
            + [f"{flops_unit} ours"] + [f"{flops_unit} {m}" for m in modes]
            + ["peak memory GiB ours / " + " / ".join(modes), "first call s ours / " + " / ".join(modes), "target"])
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for f in figures:
        ours = f.results.get("ours", {})
        flops = ours.get("flops") or 0.0
        cells = [f"{f.name} ({f.unit})", _fmt(ours.get("per_s")) if "error" not in ours else "failed"]
        peer_rows = [f.results.get(m, {}) for m in modes]
        cells += [("failed" if "error" in p else _fmt(p.get("per_s"))) if m in f.peers else "" for m, p in zip(modes, peer_rows)]
        ratios = []
        for m, p in zip(modes, peer_rows):
            ok = m in f.peers and p.get("per_s") and ours.get("per_s")
            ratios.append(f"{ours['per_s'] / p['per_s']:.2f}x" if ok else "")
        cells += ratios

        def rate(result):
            return _fmt(flops / result["seconds"] / scale, 2 if scale == 1e12 else 1) if flops and result.get("seconds") else ""

        cells += [rate(ours)] + [rate(p) if m in f.peers else "" for m, p in zip(modes, peer_rows)]

        def gib(result):
            b = result.get("peak_bytes")
            return f"{b / 2**30:.1f}" if b else "–"

        cells.append(" / ".join([gib(ours)] + [gib(p) for p in peer_rows]))
        cells.append(" / ".join([_fmt(ours.get("first_s"))] + [_fmt(p.get("first_s")) for p in peer_rows]))
        cells.append(f.target)
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def failures(figures: list[Figure]) -> list[str]:
    return [f"{f.name} [{side}]: {r['error']}" for f in figures for side, r in f.results.items() if "error" in r]


def report(figures: list[Figure], flops_unit: str, notes: list[str], markdown: str = "") -> str:
    env = environment()
    heading = ", ".join(f"{k} {v}" for k, v in env.items())
    text = "\n".join([f"Measured {heading}.", *notes, "", table(figures, flops_unit)])
    problems = failures(figures)
    if problems:
        text += "\n\nFailed measurements:\n" + "\n".join(f"- {p}" for p in problems)
    if markdown:
        with open(markdown, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return text


def job_main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", required=True, help="one measurement, as JSON")
    print(json.dumps(_measure(json.loads(parser.parse_args().job))), flush=True)


if __name__ == "__main__":
    job_main()
