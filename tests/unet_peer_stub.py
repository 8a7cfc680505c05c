"""A stand-in for the PyTorch U-Net peer script in the benchmarks' smoke test.

The benchmarks compare against a peer script that is not part of the repository; this file has
its interface (flags parsed on import, a `UNet(T, channels, size, down, c_dim)` whose forward
takes (x, t, context, mask), and `main()` printing one JSON line per measurement) around the
course U-Net of test_unet_course.py, so `benchmarks/gpu.py --smoke` runs every figure here.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_unet_course import CourseUNet  # noqa: E402

ap = argparse.ArgumentParser()
for flag, default in (("device", "cpu"), ("batch", 8), ("image_size", 8), ("down", "32,32,64"), ("context_dim", 8),
                      ("threads", 0), ("train", "eager_fp32"), ("sample", ""), ("steps", 2)):
    ap.add_argument(f"--{flag}", type=type(default), default=default)
args = ap.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)


class UNet(torch.nn.Module):
    def __init__(self, T, ch, size, down=(256, 256, 512), t_dim=8, c_dim=512):
        super().__init__()
        self.T, self.net = T, CourseUNet(size, down, t_dim, c_dim)

    def forward(self, x, t, c, m):
        return self.net(x, t.float() / self.T, c * m)


def main():
    T, B, S, D = 400, args.batch, args.image_size, args.context_dim
    down = tuple(int(c) for c in args.down.split(","))
    model = UNet(T, 3, S, down, c_dim=D)
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T), 0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x0, context = torch.randn(B, 3, S, S), torch.randn(B, D)
    for name in [n for n in args.train.split(",") if n]:
        fwd = torch.compile(model) if name.startswith("compile") else model

        def step():
            t, e = torch.randint(0, T, (B,)), torch.randn_like(x0)
            xt = abar[t].sqrt()[:, None, None, None] * x0 + (1 - abar[t]).sqrt()[:, None, None, None] * e
            loss = F.mse_loss(fwd(xt, t, context, torch.ones(B, 1)), e)
            opt.zero_grad()
            loss.backward()
            opt.step()

        start = time.perf_counter()
        step()
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        dt = (time.perf_counter() - start) / args.steps
        print(json.dumps({"train": name, "batch": B, "step_ms": dt * 1e3, "img_per_s": B / dt, "first_step_s": first}))
    n = 64
    for name in [n for n in args.sample.split(",") if n]:
        fwd = torch.compile(model) if name.startswith("compile") else model

        @torch.no_grad()
        def sample():
            x = torch.randn(n, 3, S, S)
            for i in reversed(range(T)):
                e = fwd(torch.cat([x, x]), torch.full((2 * n,), i), torch.randn(2 * n, D), torch.ones(2 * n, 1))
                x = x - 0.01 * e[:n]
            return x

        start = time.perf_counter()
        sample()
        first = time.perf_counter() - start
        dt = first  # one chain: a smoke run checks the interface, not the speed
        print(json.dumps({"sample": name, "n": n, "steps": T, "s": dt, "img_per_s": n / dt, "first_s": first}))
