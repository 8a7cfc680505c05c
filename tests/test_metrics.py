"""Embedding metrics against values worked out by hand."""
import numpy as np
import pytest

from clip_ddpm.evaluation import metrics


def test_prompt_ensemble_normalises_each_prompt_then_the_mean():
    prompts = np.array([[[3.0, 0.0], [0.0, 4.0]],     # class 0: (1, 0) and (0, 1) once normalised
                        [[1.0, 1.0], [-2.0, 2.0]]])   # class 1: (1, 1)/√2 and (-1, 1)/√2
    got = metrics.class_text_embeddings(prompts)
    # Class 0: mean (0.5, 0.5) -> (1, 1)/√2. Without per-prompt normalisation it would be (3, 4)/5.
    # Class 1: mean (0, 1/√2) -> (0, 1).
    np.testing.assert_allclose(got, [[2**-0.5, 2**-0.5], [0.0, 1.0]], atol=1e-12)


def test_zero_shot_uses_cosine_not_dot_product():
    classes = np.array([[10.0, 0.0], [0.0, 1.0]])
    images = np.array([[0.5, 0.8],    # dot: 5.0 vs 0.8 (class 0); cosine: 0.53 vs 0.85 (class 1)
                       [1.0, 0.1],
                       [-3.0, 0.2]])  # cosines -0.998 and 0.067: class 1
    np.testing.assert_array_equal(metrics.zero_shot_predictions(images, classes), [1, 0, 1])


def test_attribute_accuracies_read_factors_off_the_class():
    # 4 classes = 2 shapes x 2 colours: class = shape * 2 + colour.
    attributes = {"shape": [0, 0, 1, 1], "colour": [0, 1, 0, 1]}
    labels = np.array([0, 1, 2, 3, 3])
    predicted = np.array([0, 0, 3, 1, 3])
    # class: right on items 0 and 4 -> 2/5. shape: item 3 predicts shape 0 for shape 1 -> 4/5.
    # colour: item 1 (1 vs 0) and item 2 (0 vs 1) wrong -> 3/5.
    got = metrics.attribute_accuracies(predicted, labels, attributes)
    assert got == pytest.approx({"class": 0.4, "shape": 0.8, "colour": 0.6})


def test_recall_at_1_exact_and_by_key():
    images = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    texts = np.array([[2.0, 0.1], [1.0, 0.0], [0.9, 1.0]])
    # Nearest texts: image 0 -> text 1 (cosine 1 beats 0.9988); image 1 -> text 2 (0.74 beats
    # 0.05 and 0); image 2 -> text 2 (0.9986). Only image 2 retrieves its own text.
    assert metrics.recall_at_1(images, texts) == pytest.approx(1 / 3)
    # Texts 0 and 1 describe the same thing (same key): image 0 now counts as right too.
    keys = np.array(["red", "red", "blue"], dtype=object)
    assert metrics.recall_at_1(images, texts, keys, keys) == pytest.approx(2 / 3)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="equal"):
        metrics.accuracy(np.array([1, 2]), np.array([1]))
    with pytest.raises(ValueError, match="counts must match"):
        metrics.recall_at_1(np.ones((2, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="both"):
        metrics.recall_at_1(np.ones((2, 3)), np.ones((2, 3)), image_keys=np.arange(2))
    with pytest.raises(ValueError, match="classes, templates"):
        metrics.class_text_embeddings(np.ones((2, 3)))
