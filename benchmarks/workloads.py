"""The JAX side of the benchmarks, built from the project's own code: the DDPM train step of
`clip_ddpm.ddpm.step`, the one-jit guided sampler of `clip_ddpm.diffusion.grid` and the CLIP
towers of `clip_ddpm.models.clip`; plus the FLOP count (XLA's cost analysis) and timing.

Parameters are drawn with numpy from `jax.eval_shape` of the initialiser: timing does not depend
on their values, and compiling an initialiser would only add start-up time.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from clip_ddpm import diffusion
from clip_ddpm.ddpm.step import StepConfig, jit_train_step, make_train_step
from clip_ddpm.diffusion.grid import make_sampler
from clip_ddpm.models import layers
from clip_ddpm.models.layers import resolve_conv_impl
from clip_ddpm.models.unet import UNet
from clip_ddpm.training import parallel
from clip_ddpm.training.host_devices import split_cpu_into_devices
from clip_ddpm.training.train_state import OptimizerSettings, create_train_state

TIMESTEPS = 400  # the course's T, which the PyTorch peer also uses


@dataclasses.dataclass(frozen=True)
class UNetSpec:
    down_chs: tuple[int, int, int]
    image_size: int = 32
    context_dim: int = 512
    conv_impl: str = "auto"
    dtype: Any = jnp.float32
    fused_norm: bool = True

    @classmethod
    def from_job(cls, job: dict) -> UNetSpec:
        return cls(tuple(job["down"]), job["image_size"], job["context_dim"], job.get("conv_impl", "auto"),
                   jnp.bfloat16 if job.get("dtype") == "bfloat16" else jnp.float32, job.get("fused_norm", True))

    def model(self) -> UNet:
        conv, upsample = resolve_conv_impl(self.conv_impl)
        return UNet(down_chs=self.down_chs, context_dim=self.context_dim, conv_impl=conv,
                    upsample_impl=upsample, dtype=self.dtype, fused_norm=self.fused_norm)


def _benchmark_mesh() -> Mesh:
    """On the CPU, every device (the trainer's one per core, `host_devices`); elsewhere one
    accelerator, as the peer uses one."""
    return parallel.make_mesh(jax.devices() if jax.default_backend() == "cpu" else jax.devices()[:1])


def random_params(model: UNet, image_size: int, context_dim: int, seed: int = 0) -> Any:
    """float32 parameters of the model's shapes, kernels scaled by 1/sqrt(fan-in)."""
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)),
                            jnp.zeros((1,)), jnp.zeros((1, context_dim)) if context_dim else None)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if path[-1].key == "kernel":
            return rng.normal(0, 1 / np.sqrt(np.prod(leaf.shape[:-1])), leaf.shape).astype(np.float32)
        return np.full(leaf.shape, float(path[-1].key == "scale"), np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def program_flops(program: Any) -> float:
    """FLOPs of one call of a compiled or lowered program by XLA's cost analysis (0 when the
    backend reports none)."""
    analysis = program.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get("flops", 0.0))


def forward_flops(model: UNet, params: Any, batch: int, spec: UNetSpec) -> float:
    """FLOPs of one network call on `batch` images (a sampler step's work)."""
    x = jnp.zeros((batch, spec.image_size, spec.image_size, 3))
    c = jnp.zeros((batch, spec.context_dim)) if spec.context_dim else None
    return program_flops(jax.jit(model.apply).lower(params, x, jnp.zeros((batch,)), c))


def train_step(job: dict) -> tuple[Callable[[], Any], Callable[[], float]]:
    """(one step of the project's jitted train step with Adam(1e-4), the peer's optimiser;
    a function giving its FLOPs)."""
    run, _ = train_step_program(job)

    def flops() -> float:
        # XLA's cost analysis counts a loop body once, so the FLOPs are those of the same step
        # with the kernel gradient in one piece (layers.conv3x3_weight_grad takes large batches
        # in a loop on the CPU), counted on the program as lowered: the whole batch's work.
        grouping = layers.KERNEL_GRAD_GROUP_BYTES
        layers.KERNEL_GRAD_GROUP_BYTES = float("inf")
        try:
            return program_flops(train_step_program(job)[1]())
        finally:
            layers.KERNEL_GRAD_GROUP_BYTES = grouping

    return run, flops


def train_step_program(job: dict) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(one train step, as in `train_step`; a function giving its lowered XLA program, whose
    compiled HLO profile_step.py maps trace events back to)."""
    spec = UNetSpec.from_job(job)
    mesh = _benchmark_mesh()
    model = spec.model()
    # Adam at 1e-4, the peer's optimiser; a schedule far longer than any benchmark keeps the
    # logged rate at 1e-4 too.
    settings = OptimizerSettings.create(1e-4, 1_000_000, 0, 0.0, 0.0)

    def optimizer_for(given: OptimizerSettings) -> optax.GradientTransformation:
        # On one raveled vector of all parameters, as the trainer's optimiser works.
        return optax.flatten(optax.adam(given.learning_rate))

    schedule = diffusion.make_schedule("linear", TIMESTEPS)
    # Placed as the step places its outputs, so the second call does not compile the step again.
    state = parallel.place_replicated(create_train_state(random_params(model, spec.image_size, spec.context_dim), optimizer_for(settings)), mesh)
    step = jit_train_step(make_train_step(model, schedule, optimizer_for, StepConfig(), mesh), mesh)
    settings = parallel.place_replicated(settings, mesh)
    rng = np.random.default_rng(1)
    size = spec.image_size
    data = {"image": rng.uniform(-1, 1, (job["batch"], size, size, 3)).astype(np.float32)}
    if spec.context_dim:
        data["context"] = rng.normal(size=(job["batch"], spec.context_dim)).astype(np.float32)
    data = jax.device_put(data, parallel.data_sharded(mesh))
    key = jax.random.key(0)
    holder = {"state": state}

    def run():
        holder["state"], metrics = step(holder["state"], data, key, settings)
        return metrics

    return run, lambda: step.lower(holder["state"], data, key, settings)


def sampler(job: dict) -> tuple[Callable[[], Any], Callable[[], float]]:
    """(one guided sampling chain of job['num_images'] images; its FLOPs). Guidance evaluates
    the network on 2N images per step; XLA counts a loop body once, so the FLOPs are the
    network's on 2N images times the number of steps."""
    spec = UNetSpec.from_job(job)
    model = spec.model()
    n = job["num_images"]
    schedule = diffusion.make_schedule("linear", TIMESTEPS)
    mesh = _benchmark_mesh()
    params = parallel.place_replicated(random_params(model, spec.image_size, spec.context_dim), mesh)
    fn = make_sampler(model, schedule, (spec.image_size, spec.image_size, 3), job["kind"], job.get("steps"),
                      mesh=mesh)
    rng = np.random.default_rng(2)
    contexts = jnp.asarray(rng.normal(size=(n, spec.context_dim)), jnp.float32) if spec.context_dim else None
    w = jnp.full((n,), 1.0, jnp.float32)
    key = jax.random.key(0)
    evaluations = len(sampling_timesteps(job["kind"], job.get("steps")))
    return (lambda: fn(params, key, contexts, w)), lambda: forward_flops(model, params, 2 * n, spec) * evaluations


def sampling_timesteps(sampler_name: str, steps: int | None) -> list[int]:
    """The timesteps our sampler visits (one network evaluation each)."""
    return diffusion.samplers.sampling_timesteps(TIMESTEPS, sampler_name, steps)


def clip_encoder(job: dict) -> tuple[Callable[[], Any], Callable[[], float]]:
    """(one jitted CLIP image or text encoding of job['batch'] inputs; its FLOPs)."""
    from clip_ddpm.models.clip import CLIP, CLIPConfig, CLIPTextConfig, CLIPVisionConfig, init_clip_params

    s = job["sizes"]
    config = CLIPConfig(
        text=CLIPTextConfig(hidden_size=s["text_width"], intermediate_size=4 * s["text_width"],
                            num_attention_heads=s["text_heads"], num_hidden_layers=s["text_layers"],
                            max_position_embeddings=s["text_length"]),
        vision=CLIPVisionConfig(hidden_size=s["vision_width"], intermediate_size=4 * s["vision_width"],
                                num_attention_heads=s["vision_heads"], num_hidden_layers=s["vision_layers"],
                                image_size=s["image_size"], patch_size=s["patch_size"]),
        projection_dim=s["projection_dim"])
    on_gpu = jax.default_backend() == "gpu"
    bf16 = job.get("dtype") == "bfloat16"
    model = CLIP(config, jnp.bfloat16 if bf16 else jnp.float32, "cudnn" if on_gpu and bf16 else None)
    params = init_clip_params(config, jax.random.key(0))
    rng = np.random.default_rng(3)
    if job["tower"] == "image":
        inputs = jnp.asarray(rng.normal(size=(job["batch"], s["image_size"], s["image_size"], 3)), jnp.float32)
        fn = jax.jit(lambda p, x: model.apply({"params": p}, x, method=CLIP.encode_image))
    else:
        inputs = jnp.asarray(rng.integers(0, 49000, (job["batch"], s["text_length"])), jnp.int32)
        fn = jax.jit(lambda p, x: model.apply({"params": p}, x, method=CLIP.encode_text))
    return (lambda: fn(params, inputs)), lambda: program_flops(fn.lower(params, inputs))


def time_calls(fn: Callable[[], Any], warmup: int, repeats: int) -> tuple[float, float]:
    """(seconds of the first call, compilation included; mean seconds of `repeats` calls after
    `warmup` more), with the device synchronised (block_until_ready) around the timed calls.
    With repeats = 0 (a smoke run, which checks code paths, not speed) the first call is both."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    if repeats == 0:
        return first, first
    for _ in range(warmup):
        jax.block_until_ready(fn())
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    jax.block_until_ready(out)
    return first, (time.perf_counter() - start) / repeats


def peak_bytes() -> int | None:
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def counted_on_cpu(job: dict, timeout: float = 600) -> float:
    """The FLOPs of a job's program as lowered for the CPU, counted in a process of its own.

    On a GPU, XLA's cost analysis counts nothing on a lowered program, and on a compiled one it
    leaves out the work handed to libraries (cuDNN's convolutions and attention): the course
    U-Net's train step at batch 128 compiled for an H200 counts 38 GFLOP where the same step
    lowered for the CPU counts 166 times more (6,307 GFLOP). The model's arithmetic does not depend
    on the device, so every figure is counted on the CPU's lowering of the same job.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:
        sys.path.insert(0, here)
    from suite import run_job  # the benchmarks' own runner (imported here: it imports this module)

    # One CPU device (no XLA_FLAGS split): the whole batch's work in one program.
    result = run_job({**job, "side": "ours", "count_only": True}, timeout, {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": None})
    if "error" in result:
        raise RuntimeError(f"counting FLOPs on the CPU failed: {result['error']}")
    return float(result["flops"])


def run(job: dict) -> dict:
    """One measurement of ours, chosen by job['kind'] (train, ddpm, ddim, clip). With
    job['cpu_devices'], the CPU is split into that many devices first, as each command splits it
    by its cores (a process of its own: the split must come before JAX starts). With
    job['count_only'], only the FLOPs of the program as lowered here (see `counted_on_cpu`)."""
    if job.get("cpu_devices"):
        split_cpu_into_devices([job.get("batch") or job.get("num_images") or 0], cores=job["cpu_devices"])
    parallel.configure_jax()
    build = {"train": train_step, "ddpm": sampler, "ddim": sampler, "clip": clip_encoder}[job["kind"]]
    fn, flops = build(job)
    if job.get("count_only"):
        return {"flops": flops()}
    first, seconds = time_calls(fn, job.get("warmup", 2), job.get("repeats", 10))
    count = job.get("batch") or job.get("num_images")
    return {"per_s": count / seconds, "seconds": seconds, "first_s": first,
            "flops": flops() if jax.default_backend() == "cpu" else counted_on_cpu(job),
            "peak_bytes": peak_bytes(), "tensorflow_loaded": "tensorflow" in sys.modules,
            "backend": jax.default_backend(), "device": jax.devices()[0].device_kind}
