"""The PyTorch side of the benchmarks: the peer scripts' own measurements, and the two the peer
scripts do not make (DDIM sampling, and CLIP under torch.compile), written around the peers'
own networks.

The U-Net peer (`torch_unet_peer.py`, the course's U-Net) parses its flags when imported and
times its train step and DDPM-400 sampler in `main()`; we import it with the flags of one
measurement and read the JSON lines it prints. Its DDPM sampler has no DDIM counterpart, so
`ddim_sample` drives the peer's network with the DDIM update in the same loop shape (conditional
and unconditional halves in one batch, as the peer's sampler and ours do): the same number of
network evaluations on the same batch as our DDIM sampler. The CLIP peer
(`torch_clip_peer.py`) is transformers' `CLIPModel` with ViT-B/32 sizes and random weights; it
runs on CUDA only and in eager mode only, so `clip_encode` builds the same model from the same
config and times it eager or compiled, on any device.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import json
import os
import sys
import time
from typing import Any


def load_unet_peer(peer_dir: str, argv: list[str]):
    """The peer module, imported with `argv` as its command line."""
    path = os.path.join(peer_dir, "torch_unet_peer.py")
    spec = importlib.util.spec_from_file_location("torch_unet_peer", path)
    module = importlib.util.module_from_spec(spec)
    saved = sys.argv
    sys.argv = [path, *argv]
    try:
        spec.loader.exec_module(module)
    finally:
        sys.argv = saved
    return module


def _prepare(device: str, threads: int, smoke: bool) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
    if smoke:
        # Inductor's code generation takes minutes on a small CPU; a smoke run checks that the
        # model compiles under dynamo, not how fast the generated code is.
        torch.compile = functools.partial(torch.compile, backend="eager")
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _peak_bytes(device: str) -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if device.startswith("cuda") else None


def _timed(fn, device: str, count: int, warmup: int, repeats: int) -> dict:
    """The first call (compilation included), then the mean of `repeats` calls after `warmup`,
    with the device synchronised before each clock reading; repeats = 0: the first call is both."""
    import torch

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    start = time.perf_counter()
    fn()
    sync()
    first = seconds = time.perf_counter() - start
    if repeats:
        for _ in range(warmup):
            fn()
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
        seconds = (time.perf_counter() - start) / repeats
    return {"per_s": count / seconds, "seconds": seconds, "first_s": first, "peak_bytes": _peak_bytes(device)}


def _peer_flags(job: dict) -> list[str]:
    return [f"--device={job['device']}", f"--threads={job.get('threads', 0)}", f"--batch={job.get('batch', 1)}",
            f"--down={','.join(map(str, job['down']))}", f"--image_size={job['image_size']}",
            f"--context_dim={job['context_dim']}", f"--steps={job.get('repeats', 10)}"]


def peer_main(job: dict) -> dict:
    """The peer script's own measurement: its train step (`mode` like eager_fp32) or, with
    job['kind'] == 'ddpm', its guided DDPM-400 sampler of 64 images."""
    train, sample = (job["mode"], "") if job["kind"] == "train" else ("", job["mode"])
    _prepare(job["device"], job.get("threads", 0), job.get("smoke", False))
    peer = load_unet_peer(job["peer_dir"], _peer_flags(job) + [f"--train={train}", f"--sample={sample}"])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        peer.main()
    rows = [json.loads(line) for line in printed.getvalue().splitlines() if line.startswith("{")]
    row = next(r for r in rows if "train" in r or "sample" in r)
    if "train" in row:
        return {"per_s": row["img_per_s"], "seconds": row["step_ms"] / 1e3, "first_s": row["first_step_s"],
                "peak_bytes": _peak_bytes(job["device"])}
    return {"per_s": row["img_per_s"], "seconds": row["s"], "first_s": row["first_s"],
            "peak_bytes": _peak_bytes(job["device"])}


def ddim_sample(job: dict) -> dict:
    """Guided DDIM (eta = 0) over job['timesteps'] with the peer's network, timed like the
    peer times its sampler (the first chain includes compilation, then the mean of `repeats`)."""
    import torch

    _prepare(job["device"], job.get("threads", 0), job.get("smoke", False))
    peer = load_unet_peer(job["peer_dir"], _peer_flags(job))
    dev, n, size, dim, w = job["device"], job["num_images"], job["image_size"], job["context_dim"], 1.0
    T = 400  # the peer's (and the course's) number of diffusion steps
    model = peer.UNet(T, 3, size, down=tuple(job["down"]), c_dim=dim).to(dev)
    model = model.to(memory_format=torch.channels_last)
    fwd = model if job["mode"].startswith("eager") else torch.compile(model)
    bf16 = job["mode"].endswith("bf16")
    abar = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, device=dev), 0)
    steps = list(job["timesteps"])
    contexts = torch.randn(n, dim, device=dev)

    @torch.no_grad()
    def sample():
        x = torch.randn(n, 3, size, size, device=dev).to(memory_format=torch.channels_last)
        c2 = torch.cat([contexts, contexts])
        m2 = torch.cat([torch.ones(n, 1, device=dev), torch.zeros(n, 1, device=dev)])
        for i, t in enumerate(steps):
            tt = torch.full((2 * n,), t, device=dev)
            with torch.autocast(dev.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
                e = fwd(torch.cat([x, x]), tt, c2, m2).float()
            e = (1 + w) * e[:n] - w * e[n:]
            a_t = abar[t]
            a_prev = abar[steps[i + 1]] if i + 1 < len(steps) else torch.ones((), device=dev)
            x0 = (x - (1 - a_t).sqrt() * e) / a_t.sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * e
        return x

    return _timed(sample, dev, n, job.get("warmup", 0), job.get("repeats", 1))


def clip_config(sizes: dict) -> Any:
    """The CLIP peer's transformers config, with `sizes` (hidden sizes, layers, image size ...)."""
    from transformers import CLIPConfig

    text = dict(hidden_size=sizes["text_width"], intermediate_size=4 * sizes["text_width"],
                num_attention_heads=sizes["text_heads"], num_hidden_layers=sizes["text_layers"],
                max_position_embeddings=sizes["text_length"])
    vision = dict(hidden_size=sizes["vision_width"], intermediate_size=4 * sizes["vision_width"],
                  num_attention_heads=sizes["vision_heads"], num_hidden_layers=sizes["vision_layers"],
                  image_size=sizes["image_size"], patch_size=sizes["patch_size"])
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=sizes["projection_dim"])


def clip_encode(job: dict) -> dict:
    """transformers' CLIPModel encoding a batch of images or texts, eager or compiled."""
    import torch
    from transformers import CLIPModel

    _prepare(job["device"], job.get("threads", 0), job.get("smoke", False))
    dev, batch, sizes = job["device"], job["batch"], job["sizes"]
    dtype = torch.bfloat16 if job["mode"].endswith("bf16") else torch.float32
    model = CLIPModel(clip_config(sizes)).to(dev, dtype).eval()
    if job["tower"] == "image":
        inputs = torch.randn(batch, 3, sizes["image_size"], sizes["image_size"], device=dev, dtype=dtype)
        encode = model.get_image_features
    else:
        inputs = torch.randint(0, 49000, (batch, sizes["text_length"]), device=dev)
        encode = model.get_text_features
    if job["mode"].startswith("compile"):
        encode = torch.compile(encode)

    def run():
        with torch.no_grad():
            return encode(inputs)

    return _timed(run, dev, batch, job.get("warmup", 3), job.get("repeats", 20))


def run(job: dict) -> dict:
    """One PyTorch measurement, chosen by job['kind']."""
    kinds = {"train": peer_main, "ddpm": peer_main, "ddim": ddim_sample, "clip": clip_encode}
    result = kinds[job["kind"]](job)
    return {**result, "tensorflow_loaded": "tensorflow" in sys.modules,
            "per_s": round(result["per_s"], 3 if result["per_s"] < 100 else 1),
            "threads": _threads()}


def _threads() -> int:
    import torch

    return torch.get_num_threads()
