"""CPU throughput of ours beside the PyTorch peer (eager, float32), in one command.

    python benchmarks/cpu.py --peer_dir=DIR --threads=2 [--markdown=cpu_table.md]

DIR holds torch_unet_peer.py, the course's U-Net in PyTorch. Figures, each side in its own
process, the peer with --threads threads, ours on --threads CPU devices (one per core, as every
command of the project splits the CPU: clip_ddpm/training/host_devices.py):
  - train step (images/s) at down_chs (32,32,64) and (64,64,128) with batch 32, and at the
    course's (256,256,512) with batch 16; 32x32 images, context 512, Adam(1e-4) on both sides;
  - guided DDIM-100 sampling of 64 images at (64,64,128): both sides evaluate the network 100
    times on a batch of 128 (conditional and unconditional halves together). The peer's own
    sampler is DDPM over all 400 steps, so its network is driven here by the same DDIM loop
    (torch_side.ddim_sample); per network evaluation the work is the same as its DDPM's.
GFLOP/s are the model's FLOPs (XLA's cost analysis of our program) over each side's time.
Run it when the machine is otherwise idle: both sides suffer from other load, PyTorch's
OpenMP threads more than XLA's.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]

from suite import Figure, report, run_figures  # noqa: E402

from clip_ddpm.diffusion.samplers import sampling_timesteps  # noqa: E402

TRAIN = (((32, 32, 64), 32, "≥ 1.5x"), ((64, 64, 128), 32, "≥ 1.0x"), ((256, 256, 512), 16, "≥ 1.0x"))
SAMPLING = ((64, 64, 128), 64, 100, "≥ 1.0x")


def figures(peer_dir: str, threads: int, conv_impl: str, repeats: int) -> list[Figure]:
    common = {"device": "cpu", "threads": threads, "peer_dir": peer_dir, "dtype": "float32",
              "conv_impl": conv_impl, "image_size": 32, "context_dim": 512}
    out = []
    for down, batch, target in TRAIN:
        job = {**common, "kind": "train", "down": list(down), "batch": batch, "warmup": 2, "repeats": repeats}
        out.append(Figure(f"train step {down} batch {batch}", "img/s", {**job, "side": "ours", "cpu_devices": threads},
                          {"eager_fp32": {**job, "side": "peer", "mode": "eager_fp32"}}, target))
    down, n, steps, target = SAMPLING
    job = {**common, "kind": "ddim", "down": list(down), "num_images": n, "steps": steps, "warmup": 0, "repeats": 1,
           "timesteps": sampling_timesteps(400, "ddim", steps)}
    out.append(Figure(f"guided DDIM-{steps} sampling of {n} images {down}", "img/s",
                      {**job, "side": "ours", "cpu_devices": threads},
                      {"eager_fp32": {**job, "side": "peer", "mode": "eager_fp32"}}, target))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer_dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"),
                        help="folder with torch_unet_peer.py")
    parser.add_argument("--threads", type=int, default=2, help="the peer's CPU threads")
    parser.add_argument("--conv_impl", default="auto", help="our --conv_impl")
    parser.add_argument("--repeats", type=int, default=5, help="timed train steps per figure")
    parser.add_argument("--only", default="", help="comma-separated substrings: run only figures whose name has one")
    parser.add_argument("--markdown", default="", help="also write the report to this file")
    args = parser.parse_args()
    os.environ["JAX_PLATFORMS"] = "cpu"
    chosen = figures(os.path.abspath(args.peer_dir), args.threads, args.conv_impl, args.repeats)
    if args.only:
        chosen = [f for f in chosen if any(s in f.name for s in args.only.split(","))]
    load_before = os.getloadavg()
    run_figures(chosen, timeout=3600)
    load_after = os.getloadavg()
    notes = [f"Peer: {args.threads} threads; ours: --conv_impl={args.conv_impl}, {args.threads} CPU devices. "
             f"Load average (1 min) before / after: {load_before[0]:.2f} / {load_after[0]:.2f}."]
    print(report(chosen, "GFLOP/s", notes, args.markdown))
    if any("error" in r for f in chosen for r in f.results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
