"""Phase 6: the study's results as files: results.json (everything), results.csv (one row per
variant, seed, prompt set and w), a plot of accuracy against w, one sample grid per variant, and
report.md, whose every number is read from results.json.
"""
from __future__ import annotations

import csv
import os

import numpy as np

from clip_ddpm.evaluation.image_grid import save_grid
from clip_ddpm.evaluation.metrics import wilson_interval
from clip_ddpm.evaluation.plots import plot_curves
from clip_ddpm.evaluation.tables import mean_std

from .files import write_json
from .markdown import render_report
from .reading import RATIO_TARGET, TEXT_TARGET, reading
from .variants import VARIANTS, run_dir

REPORT_FILENAME, RESULTS_JSON, RESULTS_CSV = "report.md", "results.json", "results.csv"
PLOT_FILENAME = "accuracy_vs_guidance.png"
GRID_DIR = "grids"


def _aggregate(per_seed: list[dict], w_key: str) -> dict[str, dict]:
    metrics = sorted({m for seed in per_seed for m in seed["scores"][w_key]})
    out = {}
    for metric in metrics:
        values = [seed["scores"][w_key].get(metric, float("nan")) for seed in per_seed]
        out[metric] = {**mean_std(values), "per_seed": values}
    return out


def _pooled_interval(per_seed: list[dict], metric: str = "accuracy_both") -> dict:
    """The 95% Wilson interval of an accuracy over every seed's test images pooled: with tens of
    images per variant, differences inside it are what another draw could give."""
    images = successes = 0
    for seed in per_seed:
        scores = next(iter(seed["scores"].values()))
        images += int(scores["images"])
        successes += int(round(scores[metric] * scores["images"]))
    low, high = wilson_interval(successes, images)
    return {"low": low, "high": high, "successes": successes, "images": images, "level": 0.95}


def grid_prompt_indices(num_classes: int, count: int) -> list[int]:
    """Classes for a grid that vary every factor: class k*7 mod C for k = 0, 1, ... (for the
    shapes, whose labels are shape*6 + colour, each shape appears with changing colours)."""
    picked = []
    for k in range(num_classes):
        label = (k * 7) % num_classes
        if label not in picked:
            picked.append(label)
    return picked[:count]


def assemble(setup, clip, scorer, health, judge, scores_val, scores_test, chosen, references, timings,
             holdout, validation, test) -> dict:
    """Everything the report states, in one JSON-ready dict."""
    study, ddpm = setup.study, setup.ddpm
    accuracy_on_real = judge.real_accuracy
    phases = dict(timings["phases"])
    results = {
        "config": {
            "dataset": ddpm.dataset, "image_size": ddpm.image_size, "num_classes": len(validation.labels)
            // len(validation.templates),
            "variants": list(study.variants), "variants_not_run": [v for v in VARIANTS if v not in study.variants],
            "seeds": list(study.seeds), "guidance": list(study.guidance),
            "ddpm": {"down_chs": list(ddpm.down_chs), "num_steps": ddpm.num_steps, "batch_size": ddpm.batch_size,
                     "learning_rate": ddpm.learning_rate, "timesteps": ddpm.timesteps, "schedule": ddpm.schedule,
                     "prediction": ddpm.prediction, "loss_weighting": ddpm.loss_weighting,
                     "min_snr_gamma": ddpm.min_snr_gamma,
                     "ema_decay": ddpm.ema_decay, "dtype": ddpm.dtype, "dataset_size": ddpm.dataset_size,
                     "context_drop_prob": ddpm.context_drop_prob, "lafite_xi": ddpm.lafite_xi,
                     "gap_noise_std": ddpm.gap_noise_std, "holdout_pairs": list(ddpm.holdout_pairs),
                     "clip_image_size": ddpm.clip_image_size, "clip_denoised": ddpm.clip_denoised},
            "sampler": study.sampler, "sampling_steps": study.sampling_steps,
            "validation_templates": list(study.validation_templates), "test_templates": list(study.test_templates),
            "validation_prompts": len(validation.texts), "test_prompts": len(test.texts),
            "validation_samples": study.validation_samples, "test_samples": study.test_samples,
            "grid_prompts": study.grid_prompts,
        },
        "targets": {"text_accuracy": TEXT_TARGET, "ratio_to_text": RATIO_TARGET},
        "clip": None if clip is None else {"path": clip.path, "source": clip.source},
        "scorer_clip": None if scorer is None else {"path": scorer.path, "source": scorer.source},
        "embedding_health": health,
        "judge": {"name": judge.name, "attributes": list(judge.attributes), "accuracy_on_real": accuracy_on_real,
                  "real_images": references["real_images"],
                  "min_accuracy": study.oracle_min_accuracy, "feature_space": judge.feature_space,
                  "chance": {a: 1.0 / len(np.unique(judge.class_attributes[a])) for a in judge.attributes},
                  "trusted": all(accuracy_on_real[a] >= study.oracle_min_accuracy for a in judge.attributes)},
        "holdout_classes": list(holdout),
        "chosen_guidance": chosen,
        "validation": {v: {key: _aggregate(per_seed, key) for key in per_seed[0]["scores"]}
                       for v, per_seed in scores_val.items()},
        "test": {v: _aggregate(per_seed, next(iter(per_seed[0]["scores"]))) for v, per_seed in scores_test.items()},
        "test_intervals": {v: _pooled_interval(per_seed) for v, per_seed in scores_test.items()},
        "test_attribute_intervals": {
            v: {a: _pooled_interval(per_seed, f"accuracy_{a}") for a in judge.attributes
                if f"accuracy_{a}" in next(iter(per_seed[0]["scores"].values()))}
            for v, per_seed in scores_test.items()},
        "real": references,
        "timings": {"phases": phases, "total_seconds": float(sum(phases.values())), "runs": timings["runs"],
                    "invocations": timings["invocations"]},
    }
    results["summary"] = reading_numbers(results)
    results["reading"] = reading(results)
    return results


def reading_numbers(results: dict) -> dict:
    """The derived figures the reading states (ratios and differences), kept with the results."""
    test = results["test"]
    both = {v: test[v]["accuracy_both"]["mean"] for v in test}
    summary: dict = {"both": both}
    free = {v: a for v, a in both.items() if v.split("@")[0] in ("image", "image_noise", "image_gapshift",
                                                                  "image_elementwise")}
    if free:
        best = max(free, key=lambda v: (free[v], -len(v)))
        summary["best_language_free"] = best
        if "text" in both and both["text"] > 0:
            summary["ratio_to_text"] = free[best] / both["text"]
            summary["gap_to_text_points"] = 100.0 * (both["text"] - free[best])
    if "image" in both:
        summary["gain_over_image_points"] = {v: 100.0 * (a - both["image"]) for v, a in free.items() if v != "image"}
        summary["attribute_gain_over_image_points"] = {
            v: {a: 100.0 * (test[v][f"accuracy_{a}"]["mean"] - test["image"][f"accuracy_{a}"]["mean"])
                for a in results["judge"]["attributes"]
                if f"accuracy_{a}" in test[v] and f"accuracy_{a}" in test["image"]}
            for v in free if v != "image"}
    return summary


def _csv_rows(results: dict) -> list[dict]:
    rows = []
    for set_name in ("validation", "test"):
        for variant, by_w in results[set_name].items():
            items = by_w.items() if set_name == "validation" else [(f"{results['chosen_guidance'][variant]:g}", by_w)]
            for w, metrics in items:
                seeds = results["config"]["seeds"]
                for i, seed in enumerate(seeds):
                    rows.append({"set": set_name, "variant": variant, "seed": seed, "w": w,
                                 **{m: v["per_seed"][i] for m, v in metrics.items()}})
                for stat in ("mean", "std"):
                    rows.append({"set": set_name, "variant": variant, "seed": stat, "w": w,
                                 **{m: v[stat] for m, v in metrics.items()}})
    return rows


def write_grids(workdir: str, results: dict) -> dict[str, str]:
    """One PNG per variant from its first seed's validation samples: rows = prompts, columns = w."""
    paths = {}
    seed = results["config"]["seeds"][0]
    for variant in results["config"]["variants"]:
        path = os.path.join(run_dir(workdir, variant, seed), "study", "validation.npz")
        if not os.path.isfile(path):
            continue
        with np.load(path) as saved:
            images, prompt, guidance = saved["images"], saved["prompt"], saved["guidance"]
        weights = sorted(set(guidance.tolist()))
        picked = grid_prompt_indices(results["config"]["num_classes"], results["config"].get("grid_prompts", 12))
        grid = np.stack([np.stack([images[np.flatnonzero((prompt == p) & (guidance == w))[0]] for w in weights])
                         for p in picked])
        paths[variant] = os.path.join(GRID_DIR, f"{variant.replace('@', '_xi')}.png")
        save_grid(grid, os.path.join(workdir, paths[variant]), scale=2)
    return paths


def write_all(workdir: str, results: dict, progress) -> None:
    curves, marks = {}, {}
    for variant, by_w in results["validation"].items():
        weights = [float(w) for w in by_w]
        values = [by_w[w]["accuracy_both"]["mean"] for w in by_w]
        if len(weights) == 1:  # the unconditional floor: a flat line over the sweep
            weights, values = list(results["config"]["guidance"]), values * len(results["config"]["guidance"])
        curves[variant] = (weights, values)
        marks[variant] = results["chosen_guidance"][variant]
    plot_curves(curves, os.path.join(workdir, PLOT_FILENAME), "guidance weight w",
                "all attributes right (validation prompts)", "Accuracy against guidance", marks)
    results["files"] = {"plot": PLOT_FILENAME, "grids": write_grids(workdir, results)}
    write_json(os.path.join(workdir, RESULTS_JSON), results)
    rows = _csv_rows(results)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(os.path.join(workdir, RESULTS_CSV), "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    text = render_report(results)
    temporary = os.path.join(workdir, REPORT_FILENAME + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(temporary, os.path.join(workdir, REPORT_FILENAME))
