"""The study's configuration: its own flags, plus the DDPM run (--ddpm_*) every variant shares and
the CLIP run (--clip_*) it trains when no finished CLIP is given.

All three are the project's usual run configurations, written with the project's flag
machinery, so a study is described by one flagfile and its resolved flags are saved as
`W/study_flags.txt`: a rerun with other settings is refused instead of mixing two studies.
"""
from __future__ import annotations

import dataclasses
import os
from typing import ClassVar

from absl import flags

from clip_ddpm.clip.train.config import ClipTrainConfig
from clip_ddpm.ddpm.config import Config
from clip_ddpm.errors import UserError
from clip_ddpm.training import flags as flag_lib

from .variants import VARIANTS

DDPM_PREFIX, CLIP_PREFIX = "ddpm_", "clip_"
STUDY_FLAGS_FILENAME = "study_flags.txt"
ORACLE_KINDS = ("cnn", "clip")
# Run fields that change how often a run logs or saves, never what it computes.
REPORTING_FIELDS = frozenset({"log_every", "checkpoint_every", "keep_checkpoints", "sample_every"})


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """What the study runs, beside the shared DDPM and CLIP run configurations."""

    workdir: str = flag_lib.field("", "Study directory W (variants, oracle, CLIP, report).")
    variants: tuple[str, ...] = flag_lib.field(tuple(VARIANTS), "Variants to train: " + ", ".join(VARIANTS)
                                               + "; image_noise@XI sweeps the LAFITE noise level.")
    seeds: tuple[int, ...] = flag_lib.field((0,), "Training seeds of every variant.")

    # The shared recipes: a DDPM flagfile and a CLIP flagfile (optional), each overridden by the
    # --ddpm_* / --clip_* flags given.
    ddpm_flagfile: str = flag_lib.field("", "A clip_ddpm.train flagfile: the DDPM recipe of every variant.")
    clip_flagfile: str = flag_lib.field("", "A clip_ddpm.train_clip flagfile: the CLIP trained here.")

    # CLIP: a pretrained one, a finished run, or trained here with the --clip_* flags.
    clip_model: str = flag_lib.field("", "A pretrained CLIP (hub id or directory) to condition on; "
                                         "empty: reuse --clip_run or train one.")
    clip_run: str = flag_lib.field("", "A finished clip_ddpm.train_clip run directory to reuse.")
    scorer_clip_model: str = flag_lib.field("", "An independent CLIP for CLIP scores (and the flowers "
                                                "oracle); empty: --scorer_clip_seed or none.")
    scorer_clip_seed: int = flag_lib.field(-1, "Train a second CLIP with this seed as the independent "
                                               "scorer (-1: none).")

    # Oracle.
    oracle: str = flag_lib.field("cnn", "cnn: a classifier trained on real renders (shapes); clip: "
                                        "zero-shot over the class names with the scorer CLIP.", ORACLE_KINDS)
    oracle_data_seed: int = flag_lib.field(1001, "Dataset seed of the oracle's training renders.")
    oracle_images: int = flag_lib.field(20000, "Training renders of the oracle.")
    oracle_steps: int = flag_lib.field(1500, "Oracle training steps.")
    oracle_batch_size: int = flag_lib.field(64, "Oracle batch size.")
    oracle_learning_rate: float = flag_lib.field(3e-3, "Oracle peak learning rate.")
    oracle_widths: tuple[int, ...] = flag_lib.field((32, 64, 128), "Oracle channels per stage.")
    oracle_feature_dim: int = flag_lib.field(64, "Width of the oracle's feature layer (FD, diversity).")
    oracle_min_accuracy: float = flag_lib.field(0.99, "Accuracy on real images below which the oracle's "
                                                      "scores are marked untrustworthy.")
    real_test_images: int = flag_lib.field(1000, "Real test renders: the FD reference and the oracle's test.")

    # Sampling from prompts.
    guidance: tuple[float, ...] = flag_lib.field((0.0, 1.0, 2.0, 4.0), "Guidance weights w of the sweep.")
    validation_templates: tuple[str, ...] = flag_lib.field(
        ("a drawing of a {colour} {shape}",), "Prompt phrasings used to choose w ({colour} {shape}, "
        "or {a} / {name} for class names).")
    test_templates: tuple[str, ...] = flag_lib.field(
        ("there is a {colour} {shape}",), "Prompt phrasings the results are reported on.")
    validation_samples: int = flag_lib.field(2, "Samples per validation prompt and w.")
    test_samples: int = flag_lib.field(4, "Samples per test prompt and w (>= 2: diversity).")
    sampler: str = flag_lib.field("ddim", "Reverse process for the study's samples.", ("ddpm", "ddim"))
    sampling_steps: int = flag_lib.field(50, "DDIM steps.")
    sampling_batch: int = flag_lib.field(512, "Most images drawn in one sampler call.")
    sample_seed: int = flag_lib.field(0, "Seed of the study's samples.")
    grid_prompts: int = flag_lib.field(12, "Validation prompts shown in each variant's sample grid.")

    # Sizing: print the FLOPs estimate of the study (XLA cost analysis) and stop.
    estimate_only: bool = flag_lib.field(False, "Only estimate the study's time from its FLOPs; run nothing.")
    peak_tflops: float = flag_lib.field(790.0, "Dense bf16 peak of the accelerator, TFLOP/s (H200: 790).")
    sustained_fraction: float = flag_lib.field(0.25, "Fraction of the peak the estimate assumes is sustained.")

    # Fields that only change how a study is reported, never what it computes.
    # (The recipe flagfiles are compared through the resolved --ddpm_* and --clip_* values.)
    RESUMABLE_FIELDS: ClassVar[frozenset[str]] = frozenset({
        "workdir", "grid_prompts", "oracle_min_accuracy", "ddpm_flagfile", "clip_flagfile", "estimate_only",
        "peak_tflops", "sustained_fraction"})

    def validate(self) -> "StudyConfig":
        if not self.workdir:
            raise UserError("--workdir is required")
        if not self.variants or not self.seeds:
            raise UserError("--variants and --seeds must each name at least one")
        for name in self.variants:
            base = name.split("@")[0]
            if base not in VARIANTS or ("@" in name and base != "image_noise"):
                raise UserError(f"unknown variant {name!r}; expected {', '.join(VARIANTS)} or image_noise@XI")
            if "@" in name:
                try:
                    xi = float(name.split("@", 1)[1])
                except ValueError:
                    raise UserError(f"variant {name!r}: the LAFITE level after @ must be a number") from None
                if not 0.0 <= xi <= 1.0:
                    raise UserError(f"variant {name!r}: the LAFITE level must be in [0, 1]")
        if len(set(self.variants)) != len(self.variants) or len(set(self.seeds)) != len(self.seeds):
            raise UserError("--variants and --seeds must not repeat")
        if not self.guidance or min(self.guidance) < 0:
            raise UserError(f"--guidance needs non-negative weights, got {self.guidance}")
        if not self.validation_templates or not self.test_templates:
            raise UserError("--validation_templates and --test_templates must each give a phrasing")
        if set(self.validation_templates) & set(self.test_templates):
            raise UserError("validation and test prompts must differ: w is chosen on one and reported on the other")
        if self.validation_samples < 1 or self.test_samples < 2:
            raise UserError("--validation_samples must be >= 1 and --test_samples >= 2")
        for name in ("oracle_images", "oracle_steps", "oracle_batch_size", "oracle_feature_dim",
                     "real_test_images", "sampling_steps", "sampling_batch"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.clip_model and self.clip_run:
            raise UserError("give --clip_model or --clip_run, not both")
        if self.oracle == "clip" and not (self.scorer_clip_model or self.scorer_clip_seed >= 0
                                          or self.clip_model or self.clip_run):
            raise UserError("--oracle=clip needs a CLIP to classify with")
        return self


@dataclasses.dataclass(frozen=True)
class StudySetup:
    """The study's three configurations, as parsed."""

    study: StudyConfig
    ddpm: Config
    clip: ClipTrainConfig

    def as_flagfile(self) -> str:
        """Every resolved value (the recipe flagfiles' contents included, so the saved file stands
        alone even if those files change later)."""
        study = dataclasses.replace(self.study, ddpm_flagfile="", clip_flagfile="")
        return (flag_lib.to_flagfile_text(study)
                + _prefixed(flag_lib.to_flagfile_text(self.ddpm), DDPM_PREFIX)
                + _prefixed(flag_lib.to_flagfile_text(self.clip), CLIP_PREFIX))


def _prefixed(text: str, prefix: str) -> str:
    out = []
    for line in text.splitlines():
        body = line[2:]
        if body.startswith("no") and "=" not in body:  # a false boolean: --noNAME
            out.append(f"--no{prefix}{body[2:]}")
        else:
            out.append(f"--{prefix}{body}")
    return "\n".join(out) + "\n"


def define_study_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    flag_lib.define_flags(flag_values, StudyConfig)
    flag_lib.define_flags(flag_values, Config, DDPM_PREFIX)
    flag_lib.define_flags(flag_values, ClipTrainConfig, CLIP_PREFIX)


def _recipe(flag_values: flags.FlagValues, config_class: type, prefix: str, flagfile: str):
    """The flagfile's config (the class defaults without one), with the prefixed flags given."""
    base = flag_lib.read_flagfile(flagfile, config_class) if flagfile else config_class()
    parsed = flag_lib.from_flags(flag_values, config_class, prefix)
    given = {f.name: getattr(parsed, f.name) for f in dataclasses.fields(config_class)
             if flag_values[prefix + f.name].present}
    return dataclasses.replace(base, **given)


def setup_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> StudySetup:
    study = flag_lib.from_flags(flag_values, StudyConfig).validate()
    ddpm = _recipe(flag_values, Config, DDPM_PREFIX, study.ddpm_flagfile)
    clip = _recipe(flag_values, ClipTrainConfig, CLIP_PREFIX, study.clip_flagfile)
    _check_recipes(study, ddpm, clip)
    return StudySetup(study, ddpm, clip)


def _check_recipes(study: StudyConfig, ddpm: Config, clip: ClipTrainConfig) -> None:
    """Every run the study will train, validated before it trains any: a bad DDPM flag would
    otherwise surface only after the CLIP phase, minutes into the study. The CLIP and cache paths
    are placeholders here; the real ones are filled in when each run starts."""
    from .variants import variant_config

    workdir, seed = study.workdir or ".", study.seeds[0] if study.seeds else 0
    try:
        for variant in study.variants:
            variant_config(ddpm, workdir, variant, seed, "clip", "cache")
    except UserError as error:
        raise UserError(f"the DDPM recipe (--ddpm_flagfile, --ddpm_* flags): {error}") from None
    if not (study.clip_model or study.clip_run):
        try:
            dataclasses.replace(clip, workdir=os.path.join(workdir, "clip")).validate()
        except UserError as error:
            raise UserError(f"the CLIP recipe (--clip_flagfile, --clip_* flags): {error}") from None


def read_setup(path: str) -> StudySetup:
    """A saved W/study_flags.txt, parsed independently of the global flags."""
    flag_values = flags.FlagValues()
    define_study_flags(flag_values)
    try:
        flag_values(["study", f"--flagfile={path}"], known_only=False)
    except flags.Error as error:
        raise UserError(f"cannot read {path}: {error}") from None
    return setup_from_flags(flag_values)


def check_and_save(setup: StudySetup) -> bool:
    """Refuses a study directory that holds a study with other settings; saves the flags of a new
    one. Returns True when the directory already held this study (it resumes)."""
    from clip_ddpm.training.workdir import ensure_writable_directory

    workdir = setup.study.workdir
    ensure_writable_directory(workdir, "--workdir")
    path = os.path.join(workdir, STUDY_FLAGS_FILENAME)
    if os.path.exists(path):
        saved = read_setup(path)
        conflicts = (_conflicts(saved.study, setup.study, "", StudyConfig.RESUMABLE_FIELDS)
                     + _conflicts(saved.ddpm, setup.ddpm, DDPM_PREFIX, REPORTING_FIELDS)
                     + _conflicts(saved.clip, setup.clip, CLIP_PREFIX, REPORTING_FIELDS))
        if conflicts:
            shown = "; ".join(conflicts[:3]) + (f"; and {len(conflicts) - 3} more" if len(conflicts) > 3 else "")
            raise UserError(f"--workdir {workdir} holds a study with other settings ({shown}); use a new "
                            "--workdir or the saved flags in " + path)
        return True
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(setup.as_flagfile())
    os.replace(temporary, path)
    return False


def _conflicts(saved, requested, prefix: str, ignored: frozenset[str]) -> list[str]:
    """Every field but `ignored` whose value differs (steps included: a study trained for N
    steps is not the study trained for M)."""
    return [f"--{prefix}{f.name}: saved {getattr(saved, f.name)!r}, requested {getattr(requested, f.name)!r}"
            for f in dataclasses.fields(saved)
            if f.name not in ignored and getattr(saved, f.name) != getattr(requested, f.name)]
