"""Sampling a trained run: rebuild its model from flags.txt, restore the EMA parameters, draw a grid.

Only the EMA parameters are read from the checkpoint (not the raw parameters or Adam's moments,
three more copies of the model), and the grid is split over every local device.

`generate_samples(request)` is what `python -m clip_ddpm.sample` does; tests and the study call it
directly. One grid row per guidance weight, one column per condition (class labels, rows of a
context file, or text prompts encoded by the run's CLIP).
"""
from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from clip_ddpm.ddpm import builders
from clip_ddpm.ddpm.config import Config
from clip_ddpm.ddpm.sample_contexts import contexts_for_request
from clip_ddpm.diffusion.grid import make_sampler, sample_grid
from clip_ddpm.errors import UserError
from clip_ddpm.evaluation.image_grid import save_grid
from clip_ddpm.training import parallel
from clip_ddpm.training.checkpoints import Checkpoints, abstract_like
from clip_ddpm.training.flags import read_flagfile
from clip_ddpm.training.workdir import RunInfo, flags_path, read_run_info


@dataclasses.dataclass(frozen=True)
class SampleRequest:
    workdir: str
    step: int | None = None
    class_labels: tuple[str, ...] = ()
    context_file: str = ""
    prompts: tuple[str, ...] = ()
    guidance: tuple[float, ...] = (0.0, 1.0, 2.0)
    sampler: str = "ddpm"
    sampling_steps: int = 50
    eta: float = 0.0
    num_samples: int = 1
    seed: int = 0
    output: str = ""
    overwrite: bool = False
    scale: int = 2


def _free_path(path: str) -> str:
    """`path`, or path with _1, _2, ... before the extension: never an existing file."""
    stem, ext = os.path.splitext(path)
    candidate, i = path, 0
    while os.path.exists(candidate):
        i += 1
        candidate = f"{stem}_{i}{ext}"
    return candidate


def _output_paths(request: SampleRequest, step: int) -> tuple[str, str]:
    if request.output:
        png = request.output
        if not png.lower().endswith(".png"):
            raise UserError(f"--output must end in .png, got {png}")
        npz = os.path.splitext(png)[0] + ".npz"
        for path in (png, npz):
            if os.path.exists(path) and not request.overwrite:
                raise UserError(f"{path} exists; pass --overwrite to replace it or choose another --output")
        return png, npz
    png = _free_path(os.path.join(request.workdir, "samples", f"sample_step{step:07d}.png"))
    return png, os.path.splitext(png)[0] + ".npz"


def restore_ema_params(checkpoints: Checkpoints, config: Config, info: RunInfo, step: int,
                       mesh: jax.sharding.Mesh) -> dict:
    """The EMA parameters saved at `step`, replicated over `mesh`; nothing else of the training
    state is read."""
    model = builders.build_model(config, info.context_dim)
    abstract = jax.eval_shape(lambda: builders.init_params(model, config, info.context_dim, jax.random.key(0)))
    return checkpoints.restore_part(
        {"ema_params": abstract_like(abstract, parallel.replicated(mesh))}, step)["ema_params"]


def generate_samples(request: SampleRequest) -> dict:
    """Draws the grid and writes it; returns {"png", "npz", "step", "shape", "columns"}."""
    if not request.workdir:
        raise UserError("--workdir is required")
    if not os.path.isdir(request.workdir):
        raise UserError(f"--workdir {request.workdir} does not exist")
    if not request.guidance:
        raise UserError("give at least one --guidance")
    if request.num_samples < 1:
        raise UserError(f"--num_samples must be positive, got {request.num_samples}")
    parallel.configure_jax()
    config = read_flagfile(flags_path(request.workdir), Config)
    info = read_run_info(request.workdir)
    contexts, titles = contexts_for_request(request, config, info)

    checkpoints = Checkpoints(request.workdir, create=False)
    step = checkpoints.latest_step() if request.step is None else request.step
    if step is None:
        raise UserError(f"no checkpoint found in {request.workdir}")
    if step not in checkpoints.all_steps:
        raise UserError(f"no checkpoint at step {step}; available: {sorted(checkpoints.all_steps)}")
    if request.sampler == "ddim" and not 1 <= request.sampling_steps <= config.timesteps:
        raise UserError(f"--sampling_steps must be in [1, {config.timesteps}]")
    png, npz = _output_paths(request, step)
    model = builders.build_model(config, info.context_dim)
    mesh = parallel.make_mesh()
    ema_params = restore_ema_params(checkpoints, config, info, step, mesh)
    checkpoints.close()

    sampler = make_sampler(model, builders.build_schedule(config), (config.image_size, config.image_size, 3),
                           request.sampler, request.sampling_steps, request.eta, config.clip_denoised, mesh,
                           config.prediction)
    images = sample_grid(sampler, ema_params, jax.random.key(request.seed), contexts,
                         request.guidance, len(titles), request.num_samples)
    save_grid(images, png, scale=request.scale)
    np.savez(npz, images=images, guidance=np.asarray(request.guidance, np.float32),
             columns=np.asarray(titles), step=step)
    print(f"wrote {png} ({images.shape[0]} rows x {images.shape[1]} columns) and {npz}")
    return {"png": png, "npz": npz, "step": step, "shape": images.shape, "columns": titles}
