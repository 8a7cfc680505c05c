"""python -m clip_ddpm.sample --workdir=W [--class_label=3 | --context_file=F | --prompt="..."]

Rebuilds the model from W/flags.txt, restores the EMA parameters of the latest (or --step)
checkpoint and writes a PNG grid (one row per --guidance weight) plus an .npz of the images.
"""
from __future__ import annotations

from absl import flags

from clip_ddpm.cli import run_app, run_command

flags.DEFINE_string("workdir", None, "Run directory written by clip_ddpm.train.")
flags.DEFINE_integer("step", None, "Checkpoint step to load (default: the latest).")
flags.DEFINE_multi_string("class_label", [], "Class index or class name to draw (repeatable).")
flags.DEFINE_string("context_file", "", "A .npy [N, D] of context vectors, one grid column each.")
flags.DEFINE_multi_string("prompt", [], "Text prompt, encoded by the run's CLIP (repeatable).")
flags.DEFINE_multi_float("guidance", [0.0, 1.0, 2.0], "Guidance weight w, one grid row each (repeatable).")
flags.DEFINE_enum("sampler", "ddpm", ["ddpm", "ddim"], "Reverse process.")
flags.DEFINE_integer("sampling_steps", 50, "DDIM steps (DDPM always takes all T).")
flags.DEFINE_float("eta", 0.0, "DDIM eta (0: deterministic).")
flags.DEFINE_integer("num_samples", 1, "Samples per condition in each row.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_string("output", "", "PNG path (default: WORKDIR/samples/sample_step<STEP>.png).")
flags.DEFINE_bool("overwrite", False, "Replace an existing --output.")
flags.DEFINE_integer("scale", 2, "Enlarge the PNG by this factor for viewing.")


def main(argv: list[str]) -> None:
    from clip_ddpm.ddpm.sampling import SampleRequest, generate_samples

    f = flags.FLAGS
    request = SampleRequest(
        workdir=f.workdir or "", step=f.step, class_labels=tuple(f.class_label), context_file=f.context_file,
        prompts=tuple(f.prompt), guidance=tuple(f.guidance), sampler=f.sampler,
        sampling_steps=f.sampling_steps, eta=f.eta, num_samples=f.num_samples, seed=f.seed,
        output=f.output, overwrite=f.overwrite, scale=f.scale)
    run_command(argv, lambda: generate_samples(request))


if __name__ == "__main__":
    run_app(main)
