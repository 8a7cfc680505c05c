"""CPU training throughput of our U-Net step beside the PyTorch peer, in one run.

    python benchmarks/cpu.py --peer_script=PATH/torch_unet_peer.py --threads=2

Times our jitted, data-parallel DDPM train step (one CPU device, the same U-Net, batch and
Adam optimiser) for each --conv_impl (auto: XLA 3x3 convs + matmul transposed convs on CPU), then runs the PyTorch peer in eager mode with the same
sizes and thread count, and prints images/s of each with the ratio to the peer.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer_script", default="", help="torch_unet_peer.py (empty: ours only)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both sides")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--down", default="64,64,128")
    parser.add_argument("--context_dim", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--conv_impls", default="auto,xla,matmul")
    return parser.parse_args()


def time_ours(args: argparse.Namespace, conv_impl: str) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    from clip_ddpm import diffusion
    from clip_ddpm.ddpm.step import StepConfig, jit_train_step, make_train_step
    from clip_ddpm.models.layers import resolve_conv_impl
    from clip_ddpm.models.unet import UNet, count_params
    from clip_ddpm.training import parallel
    from clip_ddpm.training.train_state import create_train_state

    parallel.configure_jax()
    mesh = parallel.make_mesh(jax.devices()[:1])
    down = tuple(int(c) for c in args.down.split(","))
    conv, upsample = resolve_conv_impl(conv_impl)
    model = UNet(down_chs=down, context_dim=args.context_dim, conv_impl=conv, upsample_impl=upsample)
    schedule = diffusion.make_schedule("linear", 400)
    optimizer = optax.adam(1e-4)  # the peer's optimiser
    size, b = args.image_size, args.batch
    params = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), jnp.zeros((1,)),
                        jnp.zeros((1, args.context_dim)))
    state = create_train_state(params, optimizer)
    step = jit_train_step(make_train_step(model, schedule, optimizer, lambda s: 1e-4, StepConfig(), mesh), mesh)
    key = jax.random.key(1)
    batch = {"image": jax.random.normal(key, (b, size, size, 3)),
             "context": jax.random.normal(key, (b, args.context_dim))}
    start = time.perf_counter()
    state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    first = time.perf_counter() - start
    for _ in range(2):
        state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = step(state, batch, key)
    jax.block_until_ready(metrics)
    dt = (time.perf_counter() - start) / args.steps
    return {"impl": f"jax_{conv_impl}", "params": count_params(state.params), "step_ms": round(dt * 1e3, 1),
            "img_per_s": round(b / dt, 1), "first_step_s": round(first, 1)}


def time_peer(args: argparse.Namespace) -> dict | None:
    if not args.peer_script:
        return None
    command = [sys.executable, args.peer_script, "--device=cpu", f"--threads={args.threads}",
               f"--batch={args.batch}", f"--down={args.down}", f"--image_size={args.image_size}",
               f"--context_dim={args.context_dim}", "--train=eager_fp32", "--sample=", f"--steps={args.steps}"]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    train = next(r for r in rows if "train" in r)
    params = next(r["params"] for r in rows if "params" in r)
    return {"impl": "torch_eager_fp32", "params": params, "step_ms": train["step_ms"], "img_per_s": train["img_per_s"]}


def main() -> None:
    args = parse_args()
    # XLA:CPU runs one device over all host cores; give the peer as many threads (--threads).
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    results = [time_ours(args, impl) for impl in args.conv_impls.split(",") if impl]
    peer = time_peer(args)
    if peer:
        results.append(peer)
    for row in results:
        if peer:
            row["vs_peer"] = round(row["img_per_s"] / peer["img_per_s"], 2)
        print(json.dumps({"batch": args.batch, "down": args.down, "threads": args.threads, **row}), flush=True)


if __name__ == "__main__":
    main()
