"""The report's reading, written from the numbers: a tie is called a tie, and a language-free
variant that matches a text variant which itself misses its target is not read as an answer."""
from clip_ddpm.evaluation.metrics import wilson_interval
from experiments.study.reading import reading

TARGETS = {"text_accuracy": 0.85, "ratio_to_text": 0.90}


def _results(text: float, image: float) -> dict:
    both = {"text": text, "image": image, "none": 0.04}
    return {"summary": {"both": both, "best_language_free": "image", "ratio_to_text": image / text,
                        "gap_to_text_points": 100 * (text - image)},
            "targets": TARGETS, "chosen_guidance": {"text": 2.0, "image": 4.0, "none": 0.0},
            "judge": {"trusted": True}}


def test_a_tie_under_a_weak_text_variant_is_read_as_neither_a_win_nor_an_answer():
    lines = reading(_results(text=0.222, image=0.222))
    assert "tied with image (22.2%)" in lines[0] and "ahead of" not in lines[0]
    ratio_line = next(line for line in lines if line.startswith("Without text labels"))
    assert "reaches the target of 90.0%" in ratio_line
    assert "does not yet answer the question" in ratio_line


def test_a_language_free_variant_ahead_of_text_is_said_to_be_ahead():
    """The CPU study can draw image ahead of text (16.7% against 12.5%): not "-4.2 points behind"."""
    ratio_line = next(line for line in reading(_results(text=0.125, image=0.167))
                      if line.startswith("Without text labels"))
    assert "(4.2 points ahead of it)" in ratio_line and "behind" not in ratio_line
    behind = next(line for line in reading(_results(text=0.222, image=0.208)) if line.startswith("Without text"))
    assert "(1.4 points behind)" in behind


def test_a_text_variant_at_its_target_leaves_the_ratio_unqualified():
    lines = reading(_results(text=0.90, image=0.85))
    assert "ahead of image (85.0%)" in lines[0]
    ratio_line = next(line for line in lines if line.startswith("Without text labels"))
    assert "reaches the target" in ratio_line and "does not yet answer" not in ratio_line


def test_the_reading_says_whether_the_image_counts_tell_text_and_image_apart():
    def with_intervals(text_right: int, image_right: int, images: int) -> dict:
        results = _results(text=text_right / images, image=image_right / images)
        results["test_intervals"] = {
            name: dict(zip(("low", "high"), wilson_interval(right, images)), level=0.95, images=images)
            for name, right in (("text", text_right), ("image", image_right))}
        return results

    # 16 against 15 of 72 (a CPU study's size): [14.2%, 33.1%] and [13.1%, 31.6%] overlap.
    few = next(line for line in reading(with_intervals(16, 15, 72)) if "intervals" in line)
    assert "overlap (text [14.2%, 33.1%], image [13.1%, 31.6%])" in few and "do not" not in few
    # 950 against 860 of 1000: [93.5%, 96.2%] and [83.7%, 88.0%] do not.
    many = next(line for line in reading(with_intervals(950, 860, 1000)) if "intervals" in line)
    assert "do not overlap (text [93.5%, 96.2%], image [83.7%, 88.0%])" in many
    # Without intervals (results of an older study) the reading says nothing of them.
    assert not any("intervals" in line for line in reading(_results(text=0.5, image=0.46)))


def test_an_attribute_no_variant_draws_better_than_chance_is_named_with_what_separates_them():
    """The CPU study at 800 steps: shape right on 12.5-20.8% of 72 images (chance 1/6) in every
    conditioned variant, colour 80.6-95.8%. The reading must not rank them on shape's draw."""
    images = 72
    right = {"text": (9, 69), "image": (15, 58), "none": (13, 11)}  # (shape, colour) right of 72
    results = _results(text=0.125, image=0.167)
    results["judge"]["chance"] = {"shape": 1 / 6, "colour": 1 / 6}
    results["test"] = {v: {"accuracy_shape": {"mean": s / images}, "accuracy_colour": {"mean": c / images}}
                       for v, (s, c) in right.items()}
    results["test_attribute_intervals"] = {
        v: {a: dict(zip(("low", "high"), wilson_interval(k, images))) for a, k in zip(("shape", "colour"), counts)}
        for v, counts in right.items()}
    results["summary"]["gain_over_image_points"] = {"image_gapshift": -1.4}
    results["summary"]["attribute_gain_over_image_points"] = {"image_gapshift": {"shape": -4.2, "colour": 9.7}}
    lines = reading(results)
    shape_line = next(line for line in lines if line.startswith("No variant draws shape"))
    assert "chance (16.7%; text 12.5%, image 20.8%;" in shape_line and "none" not in shape_line
    assert not any(line.startswith("No variant draws colour") for line in lines)
    assert "What tells the variants apart is colour: text 95.8%, image 80.6%, none 15.3%." in lines
    assert ("image_gapshift against plain image conditioning: -1.4 points; it does not close the gap; "
            "on colour alone 9.7 points.") in lines

    # 30 of 72 shapes right for text ([31.0%, 53.4%]) is clearly above chance: nothing is said.
    right["text"] = (30, 69)
    results["test_attribute_intervals"]["text"]["shape"] = dict(zip(("low", "high"), wilson_interval(30, images)))
    lines = reading(results)
    assert not any(line.startswith(("No variant draws", "What tells")) for line in lines)
    assert "image_gapshift against plain image conditioning: -1.4 points; it does not close the gap." in lines
