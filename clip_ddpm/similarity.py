"""python -m clip_ddpm.similarity --clip_model=M --image=a.png --image=b.jpg --text="..." --text="..."

How well does each text describe each image, according to a CLIP? Prints the cosine-similarity
matrix (rows: images, columns: texts) as a table, optionally (--raw) the dot products of the
unnormalised embeddings too, whose size also reflects how long CLIP's vectors are, and can save
the matrix as a heat map (--heatmap=out.png). This is the check to run before trusting a CLIP
to steer a diffusion model: if the right caption does not score highest here, guidance by it
will not work either.
"""
from __future__ import annotations

from absl import flags

from clip_ddpm.cli import run_app, run_command


def main(argv: list[str]) -> None:
    from clip_ddpm.clip.similarity import run_similarity

    f = flags.FLAGS
    run_command(argv, lambda: run_similarity(f.clip_model or "", f.image, f.text, f.raw, f.heatmap,
                                      f.overwrite))


def define_flags() -> None:
    """The command's flags; defined only when it runs, so importing the module for its
    functions never clashes with the flags of other entry points."""
    flags.DEFINE_string("clip_model", None, "CLIP: a hub id (openai/clip-vit-base-patch32) or a local directory.")
    flags.DEFINE_multi_string("image", [], "Image file (repeatable): one row each.")
    flags.DEFINE_multi_string("text", [], "Text (repeatable): one column each.")
    flags.DEFINE_bool("raw", False, "Also print the dot products of the unnormalised embeddings.")
    flags.DEFINE_string("heatmap", "", "Save the cosine matrix as a heat-map PNG here.")
    flags.DEFINE_bool("overwrite", False, "Replace an existing --heatmap file.")


if __name__ == "__main__":
    define_flags()
    run_app(main)
