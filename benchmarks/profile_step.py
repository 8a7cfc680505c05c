"""Where the time of one jitted train step goes, per XLA operation, on this machine.

    python benchmarks/profile_step.py --down=64,64,128 --batch=32 [--conv_impl=auto] [--top=25]

Traces a few steps with the JAX profiler (XLA:CPU emits one trace event per executed operation
with --xla_cpu_enable_xprof_traceme), maps every operation to the layer and the pass it came
from (HLO metadata: `jvp(...)` is the forward pass, `transpose(jvp(...))` the backward pass) and
prints milliseconds per step by kind (convolution forward, input gradient, weight gradient,
GroupNorm+GELU, transposed convolutions, optimiser, layout copies), then per convolution layer.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true"

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_WINDOW = re.compile(r"window=\{size=(\d+)x(\d+)")


def parse_hlo(text: str) -> dict[str, dict]:
    """instruction name -> {op_name, conv_window, has_dot, kind} over every computation, where a
    fusion inherits what its fused computation holds."""
    computations: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    current = ""
    for line in text.splitlines():
        head = _COMPUTATION.match(line)
        if head and line.rstrip().endswith("{"):
            current = head.group(1)
            continue
        inst = _INSTRUCTION.match(line)
        if inst and current:
            computations[current].append((inst.group(1), inst.group(2)))

    def describe(body: str, seen: set[str]) -> dict:
        info = {"op_name": "", "window": None, "dot": False, "conv": False}
        match = _OP_NAME.search(body)
        if match:
            info["op_name"] = match.group(1)
        if " convolution(" in body:
            info["conv"] = True
            window = _WINDOW.search(body)
            info["window"] = tuple(int(v) for v in window.groups()) if window else None
        if " dot(" in body:
            info["dot"] = True
        called = _CALLS.search(body)
        if called and called.group(1) not in seen and " fusion(" in body:
            seen.add(called.group(1))
            for _, inner in computations.get(called.group(1), []):
                sub = describe(inner, seen)
                info["op_name"] = info["op_name"] or sub["op_name"]
                info["conv"] |= sub["conv"]
                info["dot"] |= sub["dot"]
                info["window"] = info["window"] or sub["window"]
        return info

    table = {}
    for body_list in computations.values():
        for name, body in body_list:
            table[name] = describe(body, set())
        # An operation without metadata (XLA drops it on some rewritten convolutions) takes its
        # first user's: the bitcast or copy that follows it still names the layer.
        for name, _ in body_list:
            if not table[name]["op_name"]:
                use = re.compile(rf"%{re.escape(name)}[,)]")
                user = next((n for n, b in body_list if use.search(b) and table[n]["op_name"]), None)
                if user:
                    table[name]["op_name"] = table[user]["op_name"]
    return table


def classify(name: str, info: dict) -> tuple[str, str]:
    """(kind, layer) of one operation."""
    op = info["op_name"]
    backward = "transpose(" in op
    layer_match = re.search(r"jvp\(UNet\)\)?/(.*)/[^/]+$", op)
    layer = layer_match.group(1) if layer_match else ""
    layer = re.sub(r"UNet\._condition/", "", layer)
    layer = re.sub(r"/(Conv3x3|GroupNorm|ConvTranspose2x2)_0$", "", layer)
    if info["conv"]:
        window = info["window"] or (0, 0)
        if window[0] > 3:  # a kernel-sized result over a whole feature map: the weight gradient
            return "conv weight-grad", layer
        if "ConvTranspose" in op:
            return ("convT " + ("backward" if backward else "forward")), layer
        return ("conv input-grad" if backward else "conv forward"), layer
    if "ConvTranspose" in op:
        return ("convT " + ("backward" if backward else "forward")), layer
    if info["dot"]:
        if "Conv3x3" in op or "out_conv" in op:
            return ("conv(matmul) " + ("backward" if backward else "forward")), layer
        return ("dense " + ("backward" if backward else "forward")), layer
    if "GroupNorm" in op or "erf" in op or "/out_norm" in op or ("GELUConv" in layer and "Conv3x3" not in layer):
        return ("GroupNorm+GELU " + ("backward" if backward else "forward")), layer
    if name.startswith(("transpose", "copy", "wrapped_copy", "wrapped_transpose", "bitcast")):
        return "layout copies", layer
    if "jvp(" not in op:
        return "optimiser, EMA, noise, loss", layer
    return ("other " + ("backward" if backward else "forward")), layer


def trace_durations(run, steps: int) -> dict[str, float]:
    """operation name -> total microseconds over `steps` traced calls of `run`."""
    import jax

    directory = tempfile.mkdtemp(prefix="clip_ddpm_profile_")
    jax.profiler.start_trace(directory, create_perfetto_trace=True)
    for _ in range(steps):
        jax.block_until_ready(run())
    jax.profiler.stop_trace()
    path = sorted(glob.glob(os.path.join(directory, "**", "perfetto_trace.json.gz"), recursive=True))[-1]
    with gzip.open(path) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    totals: dict[str, float] = collections.defaultdict(float)
    for event in events:
        if event.get("ph") == "X":
            totals[event["name"]] += float(event.get("dur", 0.0))
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--down", default="64,64,128")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--context_dim", type=int, default=512)
    parser.add_argument("--conv_impl", default="auto")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--top", type=int, default=0, help="also list the N slowest operations")
    args = parser.parse_args()

    import jax

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from workloads import time_calls, train_step_program

    from clip_ddpm.training import parallel

    parallel.configure_jax()
    job = {"kind": "train", "down": [int(c) for c in args.down.split(",")], "batch": args.batch,
           "image_size": args.image_size, "context_dim": args.context_dim, "conv_impl": args.conv_impl}
    run, lower_step = train_step_program(job)
    table = parse_hlo(lower_step().compile().as_text())
    _, step_s = time_calls(run, 1, 2)
    totals = trace_durations(run, args.steps)
    ops = {name: us / args.steps / 1e3 for name, us in totals.items() if name in table}
    by_kind: dict[str, float] = collections.defaultdict(float)
    by_layer: dict[tuple[str, str], float] = collections.defaultdict(float)
    for name, ms in ops.items():
        kind, layer = classify(name, table[name])
        by_kind[kind] += ms
        by_layer[(layer, kind)] += ms
    total = sum(ops.values())
    print(f"{jax.__version__=} down={args.down} batch={args.batch} conv_impl={args.conv_impl}: "
          f"step {step_s * 1e3:.1f} ms wall, {total:.1f} ms summed over operations")
    for kind, ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:32s} {ms:9.1f} ms  {100 * ms / total:5.1f}%")
    print("per layer (ms: conv forward / input-grad / weight-grad, GroupNorm+GELU forward / backward)")
    layers = sorted({layer for layer, _ in by_layer if layer})
    for layer in layers:
        cells = [by_layer.get((layer, k), 0.0) for k in
                 ("conv forward", "conv input-grad", "conv weight-grad", "GroupNorm+GELU forward",
                  "GroupNorm+GELU backward", "convT forward", "convT backward",
                  "conv(matmul) forward", "conv(matmul) backward")]
        if sum(cells) > 0.05:
            print(f"  {layer:40s} " + " ".join(f"{c:7.1f}" for c in cells))
    if args.top:
        print(f"slowest {args.top} operations")
        for name, ms in sorted(ops.items(), key=lambda kv: -kv[1])[:args.top]:
            kind, layer = classify(name, table[name])
            print(f"  {ms:8.2f} ms  {name:40s} {kind:26s} {layer}")


if __name__ == "__main__":
    main()
