"""GPU throughput of ours beside the PyTorch peers, eager and torch.compile, in one command.

    python benchmarks/gpu.py --peer_dir=DIR [--markdown=gpu_table.md]
    python benchmarks/gpu.py --peer_dir=DIR --smoke       # tiny sizes on the CPU, in a minute

DIR holds torch_unet_peer.py (the course's U-Net in PyTorch) and torch_clip_peer.py (whose
ViT-B/32 sizes the CLIP figures use). Figures, each in its own process, timed after warm-up
with the device synchronised:
  - train step of the course U-Net (256,256,512), 32x32, context 512, bf16 compute, Adam,
    batch 128, 512 and 2048 (images/s);
  - guided sampling of 64 images (conditional and unconditional halves in one batch of 128),
    DDPM over all 400 steps and DDIM over 50 (images/s). The peer's sampler is its own DDPM-400;
    for DDIM-50 its network is driven by the same DDIM loop (torch_side.ddim_sample), so both
    sides make 50 evaluations of a batch of 128;
  - CLIP ViT-B/32 (random weights) encoding 256 images of 224x224, and 256 texts of 77 tokens.
The table gives per figure: ours, each peer mode, the ratios, TFLOP/s (the model's FLOPs by
XLA's cost analysis over each side's time), peak device memory and the first call's time
(compilation included). TensorFlow is never imported (the GPU image has none).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__)), os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]

from suite import Figure, report, run_figures  # noqa: E402

from clip_ddpm.diffusion.samplers import sampling_timesteps  # noqa: E402

TIMESTEPS = 400  # the course's and the peer's T

VIT_B32 = {"text_width": 512, "text_heads": 8, "text_layers": 12, "text_length": 77, "vision_width": 768,
           "vision_heads": 12, "vision_layers": 12, "image_size": 224, "patch_size": 32, "projection_dim": 512}
TINY_CLIP = {"text_width": 32, "text_heads": 2, "text_layers": 2, "text_length": 16, "vision_width": 32,
             "vision_heads": 2, "vision_layers": 2, "image_size": 32, "patch_size": 16, "projection_dim": 16}


def figures(peer_dir: str, smoke: bool) -> list[Figure]:
    device = "cpu" if smoke else "cuda"
    dtype, modes = ("float32", ("eager_fp32", "compile_fp32")) if smoke else ("bfloat16", ("eager_bf16", "compile_bf16"))
    # The smoke images are 4x4: the peer's DDPM figure is always 400 steps on 64 images.
    unet = ({"down": [32, 32, 64], "image_size": 4, "context_dim": 8} if smoke else
            {"down": [256, 256, 512], "image_size": 32, "context_dim": 512})
    batches = (4,) if smoke else (128, 512, 2048)
    num_images, ddim_steps = 64, (3 if smoke else 50)  # the peer samples 64 images
    clip, clip_batch = (TINY_CLIP, 4) if smoke else (VIT_B32, 256)
    # One PyTorch thread in a smoke run: OpenMP threads spin badly on a busy shared CPU.
    common = {"device": device, "smoke": smoke, "peer_dir": peer_dir, "dtype": dtype, "threads": 1 if smoke else 0}
    timing = {"warmup": 1, "repeats": 2} if smoke else {"warmup": 3, "repeats": 20}
    # A smoke run checks every code path once: torch.compile (with the eager backend on the CPU,
    # so it measures nothing) only beside the train step.
    other_modes = modes[:1] if smoke else modes
    out = []
    for batch in batches:
        job = {**common, **unet, "kind": "train", "batch": batch, **timing}
        out.append(Figure(f"train step, batch {batch}", "img/s", {**job, "side": "ours"},
                          {m: {**job, "side": "peer", "mode": m} for m in modes},
                          target="" if smoke else "≥ 10,500 img/s"))
    # A smoke run times one chain (its first): 400 steps of a tiny model are all overhead.
    sample_timing = {"warmup": 0, "repeats": 0 if smoke else 2}
    for kind, steps in (("ddpm", None), ("ddim", ddim_steps)):
        job = {**common, **unet, **sample_timing, "kind": kind, "steps": steps, "num_images": num_images,
               "timesteps": sampling_timesteps(TIMESTEPS, kind, steps)}
        name = f"guided {kind.upper()}-{len(job['timesteps'])} sampling, {num_images} images"
        out.append(Figure(name, "img/s", {**job, "side": "ours"}, {m: {**job, "side": "peer", "mode": m} for m in other_modes},
                          target="" if smoke else "≥ 45 img/s"))
    for tower, unit, target in (("image", "images/s", "≥ 34,000 images/s"), ("text", "texts/s", "≥ 49,000 texts/s")):
        job = {**common, **timing, "kind": "clip", "tower": tower, "batch": clip_batch, "sizes": clip}
        out.append(Figure(f"CLIP {'ViT-B/32 ' if not smoke else ''}{tower} encoding, batch {clip_batch}", unit,
                          {**job, "side": "ours"}, {m: {**job, "side": "peer", "mode": m} for m in other_modes},
                          target="" if smoke else target))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer_dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"),
                        help="folder with torch_unet_peer.py")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (what the test runs)")
    parser.add_argument("--markdown", default="", help="also write the report to this file")
    parser.add_argument("--only", default="", help="comma-separated substrings: run only figures whose name has one")
    parser.add_argument("--timeout", type=float, default=0, help="seconds per measurement in its own process (default 900; a smoke run measures in-process)")
    args = parser.parse_args()
    if args.smoke:
        os.environ["JAX_PLATFORMS"] = "cpu"
    chosen = figures(os.path.abspath(args.peer_dir), args.smoke)
    if args.only:
        chosen = [f for f in chosen if any(s in f.name for s in args.only.split(","))]
    run_figures(chosen, args.timeout or 900, in_process=args.smoke)
    notes = ["Smoke run: tiny sizes on the CPU; torch.compile with dynamo's eager backend."] if args.smoke else []
    print(report(chosen, "GFLOP/s" if args.smoke else "TFLOP/s", notes, args.markdown))
    if any("error" in r for f in chosen for r in f.results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
