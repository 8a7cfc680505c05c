"""python -m clip_ddpm.embed --dataset=tfds:tf_flowers --split=train --clip_model=M [--kind=image,text]

Precomputes the CLIP embeddings of a dataset's images (and/or captions) into the embedding cache
that CLIP-conditioned training reads, batched and sharded over every local device. Stopping it
loses at most the shard in progress: running it again continues from the first missing shard.
The dataset flags mean what they mean for clip_ddpm.train, so training finds this cache.
"""
from __future__ import annotations

from absl import flags

from clip_ddpm.cli import run_app, run_command


def main(argv: list[str]) -> None:
    from clip_ddpm.clip.embedding_cache import EmbedRequest, embed_dataset

    f = flags.FLAGS
    request = EmbedRequest(
        clip_model=f.clip_model or "", clip_revision=f.clip_revision, dataset=f.dataset, split=f.split,
        image_size=f.image_size, dataset_size=f.dataset_size, seed=f.seed,
        holdout_pairs=tuple(p.strip() for p in f.holdout_pairs),
        tfds_data_dir=f.tfds_data_dir, cache_dir=f.cache_dir, kinds=tuple(k.strip() for k in f.kind),
        shard_size=f.shard_size, batch_size=f.batch_size)
    run_command(argv, lambda: embed_dataset(request))


def define_flags() -> None:
    """The command's flags; defined only when it runs, so importing the module for its
    functions never clashes with the flags of other entry points."""
    flags.DEFINE_string("dataset", "shapes", "Image source: shapes | tfds:NAME | folder:PATH.")
    flags.DEFINE_string("split", "train", "Dataset split to embed.")
    flags.DEFINE_integer("image_size", 32, "Image side in pixels the dataset is loaded at (as in training).")
    flags.DEFINE_integer("dataset_size", 0, "Number of images of a procedural source (0: its default).")
    flags.DEFINE_integer("seed", 0, "Seed of a procedural source (as in training).")
    flags.DEFINE_list("holdout_pairs", [], "Shapes classes left out of training (as in training).")
    flags.DEFINE_string("tfds_data_dir", "", "tensorflow-datasets data directory (empty: the tfds default).")
    flags.DEFINE_string("clip_model", None, "CLIP: a hub id (openai/clip-vit-base-patch32) or a local directory.")
    flags.DEFINE_string("clip_revision", "", "With a hub id: the branch, tag or commit to use (empty: main).")
    flags.DEFINE_string("cache_dir", "", "Cache root (empty: $CLIP_DDPM_CACHE, else ~/.cache/clip_ddpm).")
    flags.DEFINE_list("kind", ["image"], "What to embed: image, text (the captions), or both.")
    flags.DEFINE_integer("shard_size", 1024, "Embeddings per .npy shard (the unit of resumption).")
    flags.DEFINE_integer("batch_size", 256, "Global CLIP batch, split over the local devices.")


if __name__ == "__main__":
    define_flags()
    run_app(main)
