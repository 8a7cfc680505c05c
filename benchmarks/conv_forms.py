"""Time of each pass of every 3x3 convolution of a U-Net, in each form, beside PyTorch's
Conv2d (channels-last, the peer's layout), on this machine.

    python benchmarks/conv_forms.py --down=64,64,128 --batch=32

One JSON line per layer shape [batch, side, in, out]: milliseconds of the forward pass, the
input gradient and the kernel gradient in XLA's form and in the matmul form (models/layers.py),
and PyTorch's forward and forward+backward; then the totals, the sum of each pass's faster
form included. This is the measurement behind `choose_conv3x3_forms`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def conv_shapes(down: tuple[int, int, int], batch: int, size: int) -> list[tuple[int, int, int, int]]:
    """(batch, side, in, out) of the U-Net's 3x3 convolutions, one entry per distinct shape."""
    c0, c1, c2 = down
    shapes = [(size, 3, c0), (size, c0, c0), (size, c0, c1), (size, c1, c1), (size // 2, 4 * c1, c1),
              (size // 2, c1, c2), (size // 2, c2, c2), (size // 4, 4 * c2, c2), (size // 4, c2, c2),
              (size // 2, c1, c1), (size, c0, c0), (size, 2 * c0, c0), (size, c0, 3)]
    return list(dict.fromkeys((batch, s, i, o) for s, i, o in shapes))


def best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--down", default="64,64,128")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="PyTorch's threads")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    from clip_ddpm.models import layers

    torch.set_num_threads(args.threads)

    def xla_kernel_grad(x, g):
        kernel = jnp.zeros((3, 3, x.shape[-1], g.shape[-1]), x.dtype)
        return jax.vjp(lambda k: layers.conv3x3_xla(x, k), kernel)[1](g)[0]

    passes = {
        "fwd_xla": jax.jit(layers.conv3x3_xla), "fwd_matmul": jax.jit(layers.conv3x3_matmul),
        "dx_xla": jax.jit(lambda g, k: layers.conv3x3_input_grad(g, k, "xla")),
        "dx_matmul": jax.jit(lambda g, k: layers.conv3x3_input_grad(g, k, "matmul")),
        "dw_xla": jax.jit(xla_kernel_grad), "dw_matmul": jax.jit(layers.conv3x3_weight_grad),
    }
    totals: dict[str, float] = {}
    rng = np.random.default_rng(0)
    for b, s, cin, cout in conv_shapes(tuple(int(c) for c in args.down.split(",")), args.batch, args.image_size):
        x = jnp.asarray(rng.normal(size=(b, s, s, cin)), jnp.float32)
        k = jnp.asarray(rng.normal(size=(3, 3, cin, cout)), jnp.float32)
        g = jnp.asarray(rng.normal(size=(b, s, s, cout)), jnp.float32)
        inputs = {"fwd": (x, k), "dx": (g, k), "dw": (x, g)}
        row = {name: best_of(lambda f=f, a=inputs[name[:name.index("_")]]: jax.block_until_ready(f(*a)), args.repeats)
               for name, f in passes.items()}
        tx = torch.randn(b, cin, s, s).contiguous(memory_format=torch.channels_last).requires_grad_(True)
        conv = torch.nn.Conv2d(cin, cout, 3, padding=1).to(memory_format=torch.channels_last)
        tg = torch.randn(b, cout, s, s).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            row["torch_fwd"] = best_of(lambda: conv(tx), args.repeats)
        row["torch_fwd_bwd"] = best_of(lambda: torch.autograd.grad(conv(tx), (tx, conv.weight, conv.bias), tg),
                                       args.repeats)
        row["best_fwd_bwd"] = sum(min(row[f"{p}_xla"], row[f"{p}_matmul"]) for p in ("fwd", "dx", "dw"))
        for name, value in row.items():
            totals[name] = totals.get(name, 0.0) + value
        print(json.dumps({"shape": [b, s, cin, cout], "fwd_gflop": round(2 * b * s * s * 9 * cin * cout / 1e9, 2),
                          **{name: round(value * 1e3, 1) for name, value in row.items()}}), flush=True)
    print(json.dumps({"total_ms": {name: round(value * 1e3, 1) for name, value in totals.items()}}))


if __name__ == "__main__":
    main()
