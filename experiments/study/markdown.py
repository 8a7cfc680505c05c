"""report.md from results.json: every number in it is formatted from that dict."""
from __future__ import annotations

from clip_ddpm.evaluation.tables import decimal, markdown_table, percent, with_spread

METRIC_TITLES = {"accuracy_both": "all right", "accuracy_shape": "shape", "accuracy_colour": "colour",
                 "accuracy_class": "class", "fd": "FD", "diversity": "diversity",
                 "border_saturation": "border saturation",
                 "clip_score_conditioning": "CLIP score (conditioning CLIP)",
                 "clip_score_independent": "CLIP score (independent CLIP)",
                 "accuracy_both_seen": "all right, seen pairs", "accuracy_both_unseen": "all right, unseen pairs"}
PERCENT_METRICS = {"accuracy_both", "accuracy_shape", "accuracy_colour", "accuracy_class",
                   "accuracy_both_seen", "accuracy_both_unseen"}


def _cell(metric: str, stats: dict) -> str:
    return with_spread(stats, percent if metric in PERCENT_METRICS else decimal)


def _metrics(results: dict) -> list[str]:
    present = {m for v in results["test"].values() for m in v}
    attributes = [f"accuracy_{a}" for a in results["judge"]["attributes"] if a != "class"]
    order = ["accuracy_both"] + attributes + ["fd", "diversity", "border_saturation", "clip_score_conditioning",
                                             "clip_score_independent", "accuracy_both_seen", "accuracy_both_unseen"]
    return [m for m in order if m in present]


def _results_table(results: dict) -> str:
    metrics = _metrics(results)
    intervals = results.get("test_intervals", {})
    rows = []
    for variant, stats in results["test"].items():
        w = results["chosen_guidance"][variant]
        cells = [_cell(m, stats[m]) for m in metrics]
        rows.append([variant, "–" if variant == "none" else f"{w:g}", cells[0], _interval(intervals.get(variant))]
                    + cells[1:])
    real = results["real"]
    cells = [(percent(real[m]) if m in PERCENT_METRICS else decimal(real[m])) if m in real else "–" for m in metrics]
    rows.append(["real images", "–", cells[0], "–"] + cells[1:])
    titles = [METRIC_TITLES[m] for m in metrics]
    return markdown_table(["variant", "w", titles[0], _interval_title(results)] + titles[1:], rows)


def _interval_title(results: dict) -> str:
    levels = {interval["level"] for interval in results.get("test_intervals", {}).values()}
    return f"{100 * levels.pop():g}% interval" if len(levels) == 1 else "interval"


def _interval(interval: dict | None) -> str:
    """"[14.2%, 33.1%] of 72" (the images it rests on), or "–"."""
    if not interval:
        return "–"
    return f"[{percent(interval['low'])}, {percent(interval['high'])}] of {interval['images']}"


def _sweep_table(results: dict) -> str:
    weights = results["config"]["guidance"]
    rows = []
    for variant, by_w in results["validation"].items():
        cells = []
        for w in weights:
            key = f"{w:g}"
            cells.append(with_spread(by_w[key]["accuracy_both"], percent) if key in by_w else "–")
        rows.append([variant] + cells + [f"{results['chosen_guidance'][variant]:g}"])
    return markdown_table(["variant"] + [f"w = {w:g}" for w in weights] + ["chosen w"], rows)


def _health_table(results: dict) -> str:
    rows = []
    for label, health in results["embedding_health"].items():
        rows.append([f"{label} CLIP"] + [percent(health.get(k, float("nan"))) for k in
                                         ("zero_shot_class", "zero_shot_shape", "zero_shot_colour")]
                    + [decimal(health["modality_gap"], 3), decimal(health["cosine_matching"], 3),
                       decimal(health["cosine_mismatched"], 3)])
    return markdown_table(["CLIP", "zero-shot class", "zero-shot shape", "zero-shot colour",
                           "modality gap ‖mean image − mean text‖", "cosine, matching pairs",
                           "cosine, mismatched pairs"], rows)


def _time_section(results: dict) -> list[str]:
    timings = results["timings"]
    lines = [f"Total wall time: {timings['total_seconds']:.0f} s over {timings['invocations']} invocation(s) "
             "(the report phase itself is not included).", ""]
    lines.append(markdown_table(["phase", "seconds"], [[p, f"{s:.0f}"] for p, s in timings["phases"].items()]))
    runs = timings["runs"]
    if runs:
        lines += ["", markdown_table(["training run", "steps", "steps/s", "seconds"], [
            [name, str(r["steps"]), decimal(r["steps_per_second"]), f"{r['seconds']:.0f}" if "seconds" in r else "–"]
            for name, r in runs.items()])]
    return lines


def _weighting(ddpm: dict) -> str:
    """The loss weighting as the report names it (results.json of older studies lack it)."""
    weighting = ddpm.get("loss_weighting", "uniform")
    if weighting == "uniform":
        return "uniform loss weighting"
    return f"{weighting} loss weighting (γ = {ddpm['min_snr_gamma']:g})"


def render_report(results: dict) -> str:
    config, judge = results["config"], results["judge"]
    ddpm = config["ddpm"]
    lines = ['# The "no text labels" study', "",
             "*If CLIP is pretrained, do we need text labels?* Every variant trains the same DDPM and differs "
             "only in its context; all are sampled from text prompts (class: from labels) and judged by a "
             "scorer that is not the model being judged.", "",
             "## Set-up", "",
             f"- Data: {config['dataset']} at {config['image_size']} px"
             + (f" (CLIP embeds the same training images at {ddpm['clip_image_size']} px)"
                if ddpm.get("clip_image_size") not in (None, 0, config["image_size"]) else "")
             + f", {config['num_classes']} classes.",
             f"- Variants run: {', '.join(config['variants'])}."
             + (f" Not run in this configuration: {', '.join(config['variants_not_run'])}."
                if config["variants_not_run"] else ""),
             f"- Seeds: {', '.join(str(s) for s in config['seeds'])}.",
             f"- DDPM: down_chs {','.join(str(c) for c in ddpm['down_chs'])}, {ddpm['num_steps']} steps of "
             f"batch {ddpm['batch_size']}, learning rate {ddpm['learning_rate']:g}, T = {ddpm['timesteps']} "
             f"({ddpm['schedule']} schedule), the U-Net predicting {ddpm.get('prediction', 'eps')}, "
             f"{_weighting(ddpm)}, EMA {ddpm['ema_decay']:g}, {ddpm['dtype']}.",
             f"- Sampling: {config['sampler']} with {config['sampling_steps']} steps"
             + (", x0 estimates clipped to [-1, 1]" if ddpm.get("clip_denoised") else "") + "; w swept over "
             f"{', '.join(f'{w:g}' for w in config['guidance'])}.",
             f"- Validation prompts (choose w): {config['validation_prompts']} prompts "
             f"({'; '.join(repr(t) for t in config['validation_templates'])}), {config['validation_samples']} "
             "samples each per w.",
             f"- Test prompts (reported): {config['test_prompts']} prompts "
             f"({'; '.join(repr(t) for t in config['test_templates'])}), {config['test_samples']} samples each "
             "at the chosen w.",
             ]
    if results["clip"]:
        lines.append(f"- Conditioning CLIP: {results['clip']['path']} ({results['clip']['source']}).")
    if results["scorer_clip"]:
        lines.append(f"- Independent CLIP (scores only): {results['scorer_clip']['path']} "
                     f"({results['scorer_clip']['source']}).")
    if ddpm["holdout_pairs"]:
        lines.append(f"- Held out of the DDPM's training: {', '.join(ddpm['holdout_pairs'])}.")
    accuracy = ", ".join(f"{k} {percent(v)}" for k, v in judge["accuracy_on_real"].items())
    lines += ["", "## Judge", "",
              f"{judge['name']}: on {judge['real_images']} held-out real images it is right on {accuracy} "
              f"(required: {percent(judge['min_accuracy'])} on every attribute). "
              + ("Its scores can be trusted." if judge["trusted"] else
                 "**It is below that, so its scores cannot be trusted.**")
              + f" FD and diversity are measured in its feature space ({judge['feature_space']}).",
              "", "## Results (test prompts, each variant at the w chosen on the validation prompts)", "",
              _results_table(results), "",
              "*all right*: the judge reads every attribute of the prompt off the image; "
              f"*{_interval_title(results)}*: the Wilson interval of *all right* given how many test images "
              "(every seed's) it rests on, i.e. how far another draw of as many images could put it; "
              "*FD*: Fréchet distance "
              "to the real test images in the judge's feature space (real images: the training images against "
              "the test images, same count); *diversity*: mean pairwise feature distance within a prompt "
              "(real images: within a class); *border saturation*: mean max(R,G,B) − min(R,G,B) of the pixels "
              "along the image edges, in pixel levels (grey backgrounds: near zero); *CLIP score*: the mean clipped cosine of image and prompt, in percent.",
              "", "## Guidance sweep (validation prompts)", "", _sweep_table(results), "",
              f"![accuracy against w]({results['files']['plot']})", ""]
    if results["embedding_health"]:
        lines += ["## Embedding health", "", _health_table(results), "",
                  "Zero-shot accuracy is CLIP's own ceiling for reading a prompt; the modality gap is the distance "
                  "between the mean unit image and text embeddings of the training set.", ""]
    lines += ["## Reading", ""] + [f"- {sentence}" for sentence in results["reading"]] + [""]
    lines += ["## Samples", "", "One grid per variant (first seed): rows are validation prompts, columns are w "
              "in increasing order.", ""]
    for variant, path in results["files"]["grids"].items():
        lines += [f"### {variant}", "", f"![{variant}]({path})", ""]
    lines += ["## Wall time", ""] + _time_section(results) + [""]
    return "\n".join(lines)
