"""The study's scores on small arrays, against values worked out by hand: Fréchet distance,
diversity, the oracle's accuracies, the embedding-health figures and mean/spread over seeds."""
import jax
import numpy as np
import pytest

from clip_ddpm.evaluation import diversity, embedding_health, frechet, image_stats, tables
from clip_ddpm.evaluation.oracle import OracleSpec, attribute_scores, oracle_outputs
from clip_ddpm.training.oracle_training import train_oracle


def test_frechet_distance_of_one_dimensional_samples():
    # a: mean 1, unbiased variance 2; b: mean 3, variance 4.
    # FD = (1 - 3)^2 + 2 + 4 - 2 sqrt(2 * 4) = 10 - 4 sqrt(2).
    got = frechet.frechet_distance(np.array([[0.0], [2.0]]), np.array([[1.0], [3.0], [5.0]]))
    assert got == pytest.approx(10 - 4 * np.sqrt(2), abs=1e-12)


def test_gaussian_frechet_distance_diagonal_and_non_commuting():
    # Diagonal: |mu_a - mu_b|^2 + sum (sqrt(a_i) - sqrt(b_i))^2 = 2 + (1 - 2)^2 + (2 - 3)^2 = 4.
    got = frechet.gaussian_frechet_distance([0, 0], np.diag([1.0, 4.0]), [1, 1], np.diag([4.0, 9.0]))
    assert got == pytest.approx(4.0, abs=1e-12)
    # [[2, 1], [1, 2]] against I: tr = 4 + 2, and sqrt([[2, 1], [1, 2]]) has eigenvalues sqrt(3), 1,
    # so FD = 6 - 2 (sqrt(3) + 1). A formula that multiplied the covariances' square roots
    # elementwise, or took tr(sqrt(A) sqrt(B)) without the sandwich, would give other numbers here
    # only because A and B commute... so check a pair that does not commute too:
    a = np.array([[2.0, 1.0], [1.0, 2.0]])
    assert frechet.gaussian_frechet_distance([0, 0], a, [0, 0], np.eye(2)) == pytest.approx(
        6 - 2 * (np.sqrt(3) + 1), abs=1e-12)
    # A = diag(4, 0), B = [[1, 1], [1, 1]]: sqrt(A) B sqrt(A) = [[4, 0], [0, 0]], whose root has
    # trace 2, so FD = 4 + 2 - 2 * 2 = 2 (tr(sqrt(A B)) would not even be real-valued here).
    assert frechet.gaussian_frechet_distance([0, 0], np.diag([4.0, 0.0]), [0, 0], np.ones((2, 2))) == pytest.approx(
        2.0, abs=1e-9)


def test_frechet_distance_is_zero_for_the_same_set_and_checks_shapes():
    x = np.random.default_rng(0).normal(size=(50, 3))
    assert frechet.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        frechet.frechet_distance(x, x[:, :2])


def test_mean_pairwise_distance_and_groups():
    # The 3-4-5 triangle: distances 5, 3 and 4.
    points = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])
    assert diversity.mean_pairwise_distance(points) == pytest.approx(4.0)
    features = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0], [1.0, 2.0], [1.0, 3.0], [9.0, 9.0]])
    groups = [0, 0, 1, 1, 1, 2]  # group 2 has one member: no pair, left out
    # Group 0: 5. Group 1: distances 1, 2, 1 -> 4/3. Mean: (5 + 4/3) / 2 = 19/6.
    assert diversity.grouped_diversity(features, groups) == pytest.approx(19 / 6)
    with pytest.raises(ValueError):
        diversity.mean_pairwise_distance(points[:1])


def test_attribute_scores_count_both_only_when_every_attribute_is_right():
    predicted = {"shape": np.array([0, 1, 2, 3]), "colour": np.array([0, 0, 1, 1])}
    target = {"shape": np.array([0, 1, 0, 3]), "colour": np.array([0, 1, 1, 1])}
    # shape wrong on item 2, colour wrong on item 1: 3/4 each, both right on items 0 and 3.
    assert attribute_scores(predicted, target) == pytest.approx({"shape": 0.75, "colour": 0.75, "both": 0.5})
    with pytest.raises(ValueError):
        attribute_scores({"shape": predicted["shape"]}, target)


def test_oracle_learns_two_attributes_and_batching_does_not_change_its_answers():
    # Attribute 0: a horizontal or a vertical bar; attribute 1: which colour channel it is drawn in.
    rng = np.random.default_rng(0)
    n = 256
    half, channel = rng.integers(2, size=n), rng.integers(3, size=n)
    images = np.full((n, 8, 8, 3), 40, np.uint8)
    for i in range(n):
        if half[i] == 0:
            images[i, 3:5, 1:7, channel[i]] = 230
        else:
            images[i, 1:7, 3:5, channel[i]] = 230
    images = np.clip(images + rng.integers(0, 20, images.shape), 0, 255).astype(np.uint8)
    spec = OracleSpec(head_sizes=(2, 3), widths=(8, 8), feature_dim=8, steps=120, batch_size=32,
                      learning_rate=1e-2)
    params = train_oracle(images, [half, channel], spec, show_progress=False)
    features, (p_half, p_channel) = oracle_outputs(params, spec, images, batch_size=100)
    assert features.shape == (n, 8)
    scores = attribute_scores({"half": p_half, "channel": p_channel}, {"half": half, "channel": channel})
    assert scores["both"] == 1.0
    small_features, (small_half, _) = oracle_outputs(params, spec, images[:7], batch_size=4)
    np.testing.assert_allclose(small_features, features[:7], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(small_half, p_half[:7])


def test_oracle_split_over_devices_trains_as_on_one_device(monkeypatch):
    """Each batch split over the test's four CPU devices, the parameters replicated: the same
    training as one device makes, up to the order of floating-point sums."""
    from clip_ddpm.training import oracle_training as oracle_module

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (64, 8, 8, 3), dtype=np.uint8)
    labels = [rng.integers(2, size=64), rng.integers(3, size=64)]
    spec = OracleSpec(head_sizes=(2, 3), widths=(8, 8), feature_dim=8, steps=20, batch_size=16, learning_rate=1e-2)
    assert oracle_module._oracle_mesh(spec.batch_size).devices.size == 4
    split = train_oracle(images, labels, spec, show_progress=False)
    all_devices = oracle_module._oracle_mesh
    monkeypatch.setattr(oracle_module, "_oracle_mesh", lambda batch: all_devices(batch, jax.local_devices()[:1]))
    whole = train_oracle(images, labels, spec, show_progress=False)
    for a, b in zip(jax.tree_util.tree_leaves(split), jax.tree_util.tree_leaves(whole)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)


def test_modality_gap_and_pair_cosines():
    # Unit images (1, 0), (0, 1): mean (.5, .5). Texts (2, 0), (0, -3) -> (1, 0), (0, -1): mean (.5, -.5).
    assert embedding_health.modality_gap(np.array([[1.0, 0.0], [0.0, 1.0]]),
                                         np.array([[2.0, 0.0], [0.0, -3.0]])) == pytest.approx(1.0)
    images = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    texts = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # Matching: cos 1, 0, 0 -> 1/3. Mismatched (classes differ): (0, 1) 1, (1, 0) 0, (1, 2) 1, (2, 1) 1 -> 3/4.
    got = embedding_health.pair_cosines(images, texts, np.array([0, 1, 0]))
    assert got == pytest.approx({"matching": 1 / 3, "mismatched": 0.75})


def test_mean_std_and_formatting():
    assert tables.mean_std([0.5, 0.7, float("nan")]) == pytest.approx({"mean": 0.6, "std": np.sqrt(0.02), "n": 2})
    assert tables.mean_std([0.4])["std"] == 0.0
    assert tables.with_spread({"mean": 0.8534, "std": 0.0121, "n": 3}) == "85.3% ± 1.2%"
    assert tables.markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n| --- | --- |\n| 1 | 2 |"


def test_border_saturation_reads_only_the_frame():
    images = np.zeros((2, 6, 6, 3), np.uint8)
    images[:, 2:4, 2:4] = (255, 0, 0)  # a saturated centre outside a 2-pixel frame: ignored
    images[0, 0, 0] = (30, 10, 20)  # one frame pixel with saturation 20 in the first image
    # 32 frame pixels per image, 64 in all: mean saturation 20 / 64.
    assert image_stats.border_saturation(images, width=2) == pytest.approx(20 / 64)


def test_wilson_interval_matches_hand_computed_values():
    from clip_ddpm.evaluation.metrics import wilson_interval

    # 5 of 10: centre 0.5, half-width z*sqrt(0.025 + z^2/400)/(1 + z^2/10) = 0.26341.
    assert wilson_interval(5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    # 0 of 10: from 0 to z^2/(n + z^2) = 3.84146/13.84146.
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.27753), abs=1e-5)
    # 16 of 72 (a CPU study's text variant): centre 0.236292, half-width 0.094618.
    assert wilson_interval(16, 72) == pytest.approx((0.141674, 0.330910), abs=1e-5)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
