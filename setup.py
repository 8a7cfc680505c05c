"""clip_ddpm: text-to-image DDPM conditioned on CLIP, in JAX."""
from setuptools import find_packages, setup

setup(
    name="clip_ddpm",
    version="0.1.0",
    description="DDPM with classifier-free guidance conditioned on CLIP embeddings, in JAX/Flax.",
    python_requires=">=3.11",
    packages=find_packages(include=["clip_ddpm", "clip_ddpm.*"]),
    install_requires=[
        # What the code and its tests are written against: jax 0.10 (CPU tests) and 0.11 (GPU);
        # orbax's CheckpointManager API of 0.12; transformers 5 (its configs, tokenizers and the
        # PIL CLIPImageProcessor; the parity tests use its PyTorch CLIPModel).
        "jax>=0.10.2,<0.12",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.12",
        "transformers>=5.0,<6",
        "huggingface_hub",
        "safetensors",
        "tokenizers",
        "tensorflow-cpu",
        "tensorflow-datasets",
        "importlib_resources",  # needed by tensorflow-datasets' builders, not declared by it
        "absl-py",
        "numpy",
        "pillow",
        "tqdm",
        "matplotlib",  # the study's plot of accuracy against guidance (imported only there)
        "tensorboardX",
    ],
    extras_require={
        # torch is only the reference implementation in parity tests; the pin keeps the CPU build.
        # pytest-xdist: the suite is mostly XLA compiling, one core at a time; two workers use both.
        "test": ["pytest", "pytest-xdist", "torch==2.13.0"],
    },
)
