"""The report's reading, written from the numbers: a tie is called a tie, and a language-free
variant that matches a text variant which itself misses its target is not read as an answer."""
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


def test_a_text_variant_at_its_target_leaves_the_ratio_unqualified():
    lines = reading(_results(text=0.90, image=0.85))
    assert "ahead of image (85.0%)" in lines[0]
    ratio_line = next(line for line in lines if line.startswith("Without text labels"))
    assert "reaches the target" in ratio_line and "does not yet answer" not in ratio_line
