"""The report's reading: a few sentences written from the numbers, never by hand.

Which variant wins and by how much, whether the best language-free variant reaches 90% of what
text labels give, whether the gap-closing variants close the text-image gap, and, when the
target is missed, which factor the numbers point to:
  * CLIP ceiling: the language-free variant already reads about as much from a prompt as CLIP's
    own zero-shot classification does from real images;
  * guidance: its best w is the largest one tried;
  * the gap: a gap-closing variant gains clearly over plain image conditioning;
and, under all of them, the DDPM itself when even the text variant is weak. When no conditioned
variant draws an attribute better than chance (its interval reaches down to chance for every one),
the reading says so and names the attributes that do tell the variants apart: all right is then
mostly the draw of the attribute at chance.
"""
from __future__ import annotations

from clip_ddpm.evaluation.tables import percent

TEXT_TARGET = 0.85
RATIO_TARGET = 0.90
CLEAR_GAIN_POINTS = 3.0


def _points(value: float) -> str:
    return f"{value:.1f}"


def _behind_or_ahead(gap_points: float) -> str:
    """text minus the language-free variant, in points, said as its distance behind or ahead."""
    if gap_points < 0:
        return f"{_points(-gap_points)} points ahead of it"
    return f"{_points(gap_points)} points behind"


def reading(results: dict) -> list[str]:
    summary, targets = results["summary"], results["targets"]
    both = summary["both"]
    chosen = results["chosen_guidance"]
    out = []
    if not results["judge"]["trusted"]:
        out.append(f"The judge ({results['judge']['name']}) is below {percent(results['judge']['min_accuracy'])} "
                   "on real images, so the accuracies below cannot be trusted as they stand.")
    ranked = sorted(both, key=lambda v: -both[v])
    runner_up = ""
    if len(ranked) > 1:
        relation = "tied with" if both[ranked[1]] == both[ranked[0]] else "ahead of"
        runner_up = f", {relation} {ranked[1]} ({percent(both[ranked[1]])})"
    out.append(f"The most accurate variant is {ranked[0]} ({percent(both[ranked[0]])} of its test images right "
               f"on every attribute, at w = {chosen[ranked[0]]:g}){runner_up}.")
    if "text" in both:
        met = "meets" if both["text"] >= targets["text_accuracy"] else "misses"
        out.append(f"Trained on text labels the DDPM reaches {percent(both['text'])}, which {met} the "
                   f"{percent(targets['text_accuracy'])} wanted of a DDPM good enough to make the comparison "
                   "informative.")
    chance_lines, separating = _attributes_at_chance(results)
    out += chance_lines
    best = summary.get("best_language_free")
    if best is not None and "ratio_to_text" in summary:
        ratio = summary["ratio_to_text"]
        verdict = "reaches" if ratio >= targets["ratio_to_text"] else "falls short of"
        text_weak = "text" in both and both["text"] < targets["text_accuracy"]
        caveat = (" (a ratio to a text variant under its own target, so it does not yet answer the question)"
                  if text_weak else "")
        out.append(f"Without text labels the best variant is {best} at {percent(both[best])}: "
                   f"{percent(ratio)} of the text variant's accuracy "
                   f"({_behind_or_ahead(summary['gap_to_text_points'])}), so it {verdict} the target of "
                   f"{percent(targets['ratio_to_text'])}{caveat}.")
        out += _overlap(results, best)
        if ratio < targets["ratio_to_text"]:
            out += _diagnosis(results, best)
    gains = summary.get("gain_over_image_points", {})
    for variant, gain in sorted(gains.items()):
        if variant.startswith(("image_noise", "image_gapshift")):
            change = "closes part of the gap" if gain >= CLEAR_GAIN_POINTS else (
                "does not close the gap" if gain > -CLEAR_GAIN_POINTS else "widens the gap")
            by_attribute = summary.get("attribute_gain_over_image_points", {}).get(variant, {})
            on = "".join(f"; on {a} alone {_points(by_attribute[a])} points" for a in separating if a in by_attribute)
            out.append(f"{variant} against plain image conditioning: {_points(gain)} points; it {change}{on}.")
    if "image_elementwise" in gains:
        out.append(f"Element-wise context dropout (the course's mask) against whole-vector dropout: "
                   f"{_points(gains['image_elementwise'])} points.")
    for floor in ("class", "none"):
        if floor in both:
            role = "one-hot labels" if floor == "class" else "no context: the floor"
            out.append(f"For reference, {floor} ({role}) reaches {percent(both[floor])}.")
    return out


def _attributes_at_chance(results: dict) -> tuple[list[str], list[str]]:
    """(lines naming each attribute no conditioned variant draws better than chance and the
    attributes that separate the variants instead, those separating attributes), from the
    per-attribute test intervals; both empty without them or when no attribute is at chance."""
    intervals, chance = results.get("test_attribute_intervals"), results["judge"].get("chance")
    if not intervals or not chance:
        return [], []
    conditioned = [v for v in intervals if v != "none"]
    attributes = [a for a in chance if all(a in intervals[v] for v in intervals)]
    at_chance = [a for a in attributes if conditioned and all(intervals[v][a]["low"] <= chance[a] for v in conditioned)]
    if not at_chance:
        return [], []
    separating = [a for a in attributes if a not in at_chance]

    def accuracy(variant: str, attribute: str) -> float:
        return results["test"][variant][f"accuracy_{attribute}"]["mean"]

    lines = []
    for attribute in at_chance:
        shown = ", ".join(f"{v} {percent(accuracy(v, attribute))}" for v in conditioned)
        lines.append(f"No variant draws {attribute} better than chance ({percent(chance[attribute])}; {shown}; "
                     "each 95% interval reaches down to it), so all right rests on the draw of the "
                     f"{attribute} and says little about the conditioning.")
    for attribute in separating:
        ranked = sorted(intervals, key=lambda v: -accuracy(v, attribute))
        lines.append(f"What tells the variants apart is {attribute}: "
                     + ", ".join(f"{v} {percent(accuracy(v, attribute))}" for v in ranked) + ".")
    return lines, separating


def _overlap(results: dict, best: str) -> list[str]:
    """Whether the text variant and the best language-free one are told apart by the number of
    test images they were judged on (their intervals overlap or not)."""
    intervals = results.get("test_intervals", {})
    if "text" not in intervals or best not in intervals:
        return []
    text, free = intervals["text"], intervals[best]
    shown = (f"text [{percent(text['low'])}, {percent(text['high'])}], {best} "
             f"[{percent(free['low'])}, {percent(free['high'])}]")
    if text["low"] <= free["high"] and free["low"] <= text["high"]:
        return [f"Their {100 * text['level']:g}% intervals overlap ({shown}): on this many test images the "
                "difference between them may be the draw's."]
    return [f"Their {100 * text['level']:g}% intervals do not overlap ({shown})."]


def _diagnosis(results: dict, best: str) -> list[str]:
    """Which factor the numbers point to when the language-free target is missed."""
    test = results["test"][best]
    health = (results.get("embedding_health") or {}).get("conditioning")
    chosen = results["chosen_guidance"][best]
    guidance = results["config"]["guidance"]
    found = []
    if health and "zero_shot_class" in health:
        ceiling = health["zero_shot_class"]
        if test["accuracy_both"]["mean"] >= 0.9 * ceiling:
            found.append(f"the CLIP ceiling: {best} is right on {percent(test['accuracy_both']['mean'])} where the "
                         f"conditioning CLIP itself names the class of {percent(ceiling)} of real images zero-shot")
        if ("zero_shot_shape" in health and "accuracy_shape" in test
                and test["accuracy_shape"]["mean"] < test["accuracy_colour"]["mean"]):
            shape, clip_shape = test["accuracy_shape"]["mean"], health["zero_shot_shape"]
            culprit = ("the DDPM (well below CLIP's own shape accuracy)" if shape < 0.9 * clip_shape
                       else "CLIP (near its own shape accuracy)")
            found.append(f"shape, lost by {culprit}: {best} gets shape right on "
                         f"{percent(shape)} and colour on {percent(test['accuracy_colour']['mean'])}, while "
                         f"CLIP reads shape zero-shot on {percent(clip_shape)} of real images")
    if chosen == max(guidance):
        found.append(f"guidance: its best w ({chosen:g}) is the largest tried, so a wider sweep may help")
    gains = results["summary"].get("gain_over_image_points", {})
    if any(g >= CLEAR_GAIN_POINTS for v, g in gains.items() if v.startswith(("image_noise", "image_gapshift"))):
        found.append(f"the modality gap: closing it helps (gap norm "
                     f"{health['modality_gap']:.2f})" if health else "the modality gap: closing it helps")
    if not found:
        return ["The numbers point to none of CLIP's ceiling, guidance or the gap alone."]
    return ["The numbers point to " + "; ".join(found) + "."]
