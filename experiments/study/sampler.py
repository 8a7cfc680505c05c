"""Drawing the study's samples from a trained variant: its EMA parameters, its contexts for a
prompt set (through the same code as `python -m clip_ddpm.sample`), and one compiled sampler
shared by every variant of the same architecture.

Rows are drawn in fixed-size batches (the last one padded) with keys that depend only on the
batch index, so two variants sampled with the same rows start from the same noise: their
differences are the models', not the draw's.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from clip_ddpm.data.dataset import to_uint8
from clip_ddpm.ddpm import builders
from clip_ddpm.ddpm.config import Config
from clip_ddpm.ddpm.sample_contexts import contexts_for_request
from clip_ddpm.ddpm.sampling import SampleRequest, restore_ema_params
from clip_ddpm.errors import UserError
from clip_ddpm.diffusion.grid import make_sampler
from clip_ddpm.training import parallel
from clip_ddpm.training.checkpoints import Checkpoints
from clip_ddpm.training.flags import read_flagfile
from clip_ddpm.training.workdir import RunInfo, flags_path, read_run_info

from .prompts import PromptSet

_SAMPLERS: dict[tuple, object] = {}


@dataclasses.dataclass
class TrainedRun:
    workdir: str
    config: Config
    info: RunInfo
    step: int
    _params: object = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def params(self) -> object:
        """The EMA parameters, read on first use: a study whose scores are already saved (a
        rerun that only rewrites the report) reads no checkpoint."""
        if self._params is None:
            checkpoints = Checkpoints(self.workdir, create=False)
            self._params = restore_ema_params(checkpoints, self.config, self.info, self.step, parallel.make_mesh())
            checkpoints.close()
        return self._params


def load_run(workdir: str) -> TrainedRun:
    """A finished run's flags, run info and latest checkpoint step (its parameters on demand)."""
    config = read_flagfile(flags_path(workdir), Config)
    info = read_run_info(workdir)
    checkpoints = Checkpoints(workdir, create=False)
    step = checkpoints.latest_step()
    checkpoints.close()
    if step is None:
        raise UserError(f"no checkpoint found in {workdir}")
    return TrainedRun(workdir, config, info, int(step))


def contexts_for(run: TrainedRun, prompts: PromptSet) -> np.ndarray | None:
    """The U-Net contexts of a prompt set: text prompts through the run's CLIP (and its gap
    transform) for CLIP runs, one-hot labels for class runs, None for an unconditional run."""
    if run.info.condition == "none":
        return None
    if run.info.condition == "class":
        request = SampleRequest(run.workdir, class_labels=tuple(run.info.class_names[k] for k in prompts.labels))
    else:
        request = SampleRequest(run.workdir, prompts=prompts.texts)
    contexts, _ = contexts_for_request(request, run.config, run.info)
    return contexts


def _sampler_for(run: TrainedRun, sampler: str, steps: int):
    c = run.config
    key = (c.down_chs, c.t_embed_dim, run.info.context_dim, c.image_size, c.dtype, c.conv_impl, c.timesteps,
           c.schedule, c.beta_start, c.beta_end, c.clip_denoised, c.prediction, sampler, steps)
    if key not in _SAMPLERS:
        _SAMPLERS[key] = make_sampler(builders.build_model(c, run.info.context_dim), builders.build_schedule(c),
                                      (c.image_size, c.image_size, 3), sampler, steps,
                                      clip_denoised=c.clip_denoised, mesh=parallel.make_mesh(),
                                      prediction=c.prediction)
    return _SAMPLERS[key]


def draw(run: TrainedRun, contexts: np.ndarray | None, guidance: Sequence[float], sampler: str, steps: int,
         batch: int, seed: int) -> np.ndarray:
    """uint8 images, one per row (contexts[i] at guidance[i]; contexts None: unconditional)."""
    fn = _sampler_for(run, sampler, steps)
    guidance = np.asarray(guidance, np.float32)
    n = len(guidance)
    batch = min(batch, n)
    out = []
    for index, start in enumerate(range(0, n, batch)):
        w = guidance[start:start + batch]
        rows = len(w)
        pad = batch - rows
        w = np.concatenate([w, np.zeros(pad, np.float32)])
        ctx = None
        if contexts is not None:
            ctx = np.asarray(contexts[start:start + batch], np.float32)
            ctx = np.concatenate([ctx, np.zeros((pad, ctx.shape[1]), np.float32)])
        images = fn(run.params, jax.random.fold_in(jax.random.key(seed), index), ctx, w)
        out.append(to_uint8(np.asarray(images)[:rows]))
    return np.concatenate(out)
