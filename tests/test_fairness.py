"""Tests for ballot_jax.fairness (counts accumulation and group metrics)."""

from __future__ import annotations

import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
)
from sklearn.metrics import accuracy_score

from ballot_jax import fairness as fm


def _class_wise_example() -> tuple[np.ndarray, np.ndarray]:
    """3 classes, groups = labels.

    class 0: 10 samples,  9 correct -> acc 0.9
    class 1: 10 samples,  5 correct -> acc 0.5
    class 2: 20 samples,  8 correct -> acc 0.4
    overall: 22 / 40 = 0.55; mean of per-class acc = 0.6.
    Wrong predictions go to class (y + 1) % 3.
    """
    labels, preds = [], []
    for y, (n, ok) in enumerate([(10, 9), (10, 5), (20, 8)]):
        labels += [y] * n
        preds += [y] * ok + [(y + 1) % 3] * (n - ok)
    return np.array(labels), np.array(preds)


def test_hand_computed_class_wise() -> None:
    labels, preds = _class_wise_example()
    m = fm.group_metrics(labels, preds, labels, num_groups=3)
    assert m["num_classes"] == 3 and m["num_samples"] == 40
    assert m["accuracy"] == pytest.approx(0.55)
    np.testing.assert_allclose(m["per_group_accuracy"], [0.9, 0.5, 0.4])
    assert m["per_group_count"] == [10, 10, 20]
    # cwv centred on overall acc 0.55: (0.35^2 + 0.05^2 + 0.15^2) / 3 = 0.1475 / 3
    assert m["cwv"] == pytest.approx(0.1475 / 3)
    # centring on mean(acc_g) = 0.6 would give (0.09 + 0.01 + 0.04) / 3 = 0.14 / 3
    assert m["cwv"] != pytest.approx(0.14 / 3)
    assert m["mcd"] == pytest.approx(0.5)
    assert m["worst_group_accuracy"] == pytest.approx(0.4)
    assert m["best_group_accuracy"] == pytest.approx(0.9)
    assert (m["worst_group"], m["best_group"]) == ("2", "0")
    frame = m["accuracy_frame"]
    assert frame["overall"] == pytest.approx(0.55)
    assert frame["group_min"] == pytest.approx(0.4)
    assert frame["group_max"] == pytest.approx(0.9)
    assert frame["difference"] == pytest.approx(0.5)
    assert frame["by_group"] == pytest.approx({"0": 0.9, "1": 0.5, "2": 0.4})
    json.dumps(m)  # host-side result must be JSON-serialisable


def test_hand_computed_multiclass_one_vs_rest() -> None:
    """Multiclass DP/EO = max over classes k of the one-vs-rest quantity."""
    labels, preds = _class_wise_example()
    m = fm.group_metrics(labels, preds, labels, num_groups=3)
    # Selection rates P(yhat=k | g): g0 -> {0: .9, 1: .1}, g1 -> {1: .5, 2: .5},
    # g2 -> {2: .4, 0: .6}.  Spreads: k=0 .9, k=1 .5, k=2 .5 -> DP = 0.9.
    assert m["demographic_parity_difference"] == pytest.approx(0.9)
    # groups are the classes, so for class k only group k has positives (TPR
    # spread 0) and FPR_g(k) = P(yhat=k | g) for g != k: k=0 -> {.0, .6},
    # k=1 -> {.1, .0}, k=2 -> {.0, .5}; max spread 0.6.
    assert m["true_positive_rate_difference"] == 0.0
    assert m["false_positive_rate_difference"] == pytest.approx(0.6)
    assert m["equalized_odds_difference"] == pytest.approx(0.6)
    # 2 groups lack positives and 1 group lacks negatives, per class.
    assert len(m["equalized_odds_excluded"]) == 9
    assert "per_group_selection_rate" not in m  # binary-only detail


def test_hand_computed_binary_sensitive_attribute() -> None:
    # group a: y=[1,1,0,0] yhat=[1,0,0,0]; group b: y=[1,0,0] yhat=[1,1,0]
    labels = np.array([1, 1, 0, 0, 1, 0, 0])
    preds = np.array([1, 0, 0, 0, 1, 1, 0])
    groups = np.array([0, 0, 0, 0, 1, 1, 1])
    m = fm.group_metrics(labels, preds, groups, 2, group_names=["a", "b"])
    assert m["accuracy"] == pytest.approx(5 / 7)
    np.testing.assert_allclose(m["per_group_accuracy"], [3 / 4, 2 / 3])
    np.testing.assert_allclose(m["per_group_selection_rate"], [1 / 4, 2 / 3])
    assert m["per_group_true_positive_rate"] == pytest.approx([0.5, 1.0])
    assert m["per_group_false_positive_rate"] == pytest.approx([0.0, 0.5])
    assert m["demographic_parity_difference"] == pytest.approx(2 / 3 - 1 / 4)
    assert m["equalized_odds_difference"] == pytest.approx(0.5)
    assert m["equalized_odds_excluded"] == []
    assert m["group_names"] == ["a", "b"]


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_matches_fairlearn_binary(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, g = 600, 4
    groups = rng.integers(0, g, n)
    labels = rng.integers(0, 2, n)
    # group-dependent error rates so the differences are non-trivial
    flip = rng.random(n) < (0.1 + 0.1 * groups)
    preds = np.where(flip, 1 - labels, labels)

    m = fm.group_metrics(labels, preds, groups, g)
    assert m["equalized_odds_excluded"] == []  # every group has both classes
    assert m["demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(labels, preds, sensitive_features=groups), abs=1e-12
    )
    assert m["equalized_odds_difference"] == pytest.approx(
        equalized_odds_difference(labels, preds, sensitive_features=groups), abs=1e-12
    )
    frame = MetricFrame(
        metrics=accuracy_score, y_true=labels, y_pred=preds, sensitive_features=groups
    )
    np.testing.assert_allclose(m["per_group_accuracy"], frame.by_group.to_numpy(), atol=1e-12)
    assert m["accuracy"] == pytest.approx(frame.overall)
    assert m["accuracy_frame"]["difference"] == pytest.approx(frame.difference())
    assert m["accuracy_frame"]["group_min"] == pytest.approx(frame.group_min())
    assert m["mcd"] == pytest.approx(frame.difference())

    # positive_label=0 is the same as relabelling 0 <-> 1 for fairlearn.
    m0 = fm.group_metrics(labels, preds, groups, g, positive_label=0)
    assert m0["demographic_parity_difference"] == pytest.approx(
        demographic_parity_difference(1 - labels, 1 - preds, sensitive_features=groups), abs=1e-12
    )
    assert m0["equalized_odds_difference"] == pytest.approx(
        equalized_odds_difference(1 - labels, 1 - preds, sensitive_features=groups), abs=1e-12
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_multiclass_is_max_of_fairlearn_one_vs_rest(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, g, c = 900, 3, 4
    groups = rng.integers(0, g, n)
    labels = rng.integers(0, c, n)
    preds = np.where(rng.random(n) < 0.3 + 0.1 * groups, rng.integers(0, c, n), labels)
    m = fm.group_metrics(labels, preds, groups, g, num_classes=c)
    dp = max(
        demographic_parity_difference(labels == k, preds == k, sensitive_features=groups)
        for k in range(c)
    )
    eo = max(
        equalized_odds_difference(labels == k, preds == k, sensitive_features=groups)
        for k in range(c)
    )
    assert m["demographic_parity_difference"] == pytest.approx(dp, abs=1e-12)
    assert m["equalized_odds_difference"] == pytest.approx(eo, abs=1e-12)


def test_eo_group_without_positives_is_excluded_with_reason() -> None:
    # group 0 ("young") has only negatives -> left out of the TPR term only.
    labels = np.array([0, 0, 0, 1, 1, 0, 0, 1, 1, 0])
    preds = np.array([1, 0, 0, 1, 0, 0, 0, 1, 1, 1])
    groups = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 2])
    m = fm.group_metrics(labels, preds, groups, 3, group_names=["young", "mid", "old"])
    # TPR: mid 1/2, old 2/2 -> diff 0.5 (young excluded; fairlearn would use 0 -> 1.0)
    # FPR: young 1/3, mid 0/2, old 1/1 -> diff 1.0
    assert m["per_group_true_positive_rate"] == [None, 0.5, 1.0]
    assert m["true_positive_rate_difference"] == pytest.approx(0.5)
    assert m["false_positive_rate_difference"] == pytest.approx(1.0)
    assert m["equalized_odds_difference"] == pytest.approx(1.0)
    (reason,) = m["equalized_odds_excluded"]
    assert "0 ('young')" in reason and "TPR" in reason
    json.dumps(m)

    # A case where the exclusion changes the number vs fairlearn's 0-rate convention.
    labels2 = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    preds2 = np.array([0, 0, 1, 1, 0, 0, 1, 0])
    groups2 = np.array([0, 0, 1, 1, 1, 2, 2, 2])
    m2 = fm.group_metrics(labels2, preds2, groups2, 3)
    assert m2["true_positive_rate_difference"] == pytest.approx(0.5)  # 1.0 vs 0.5
    assert equalized_odds_difference(labels2, preds2, sensitive_features=groups2) == pytest.approx(1.0)


def test_batched_jit_accumulation_equals_one_shot_and_ignores_padding() -> None:
    rng = np.random.default_rng(7)
    n, g, c, batch = 103, 5, 3, 16
    labels = rng.integers(0, c, n)
    preds = rng.integers(0, c, n)
    groups = rng.integers(0, g, n)

    one_shot = fm.update_counts(fm.init_counts(g, c), labels, preds, groups)
    expected = np.zeros((g, c, c), np.int64)
    np.add.at(expected, (groups, labels, preds), 1)
    np.testing.assert_array_equal(np.asarray(one_shot), expected)
    chex.assert_shape(one_shot, (g, c, c))
    chex.assert_type(one_shot, jnp.int32)

    step = jax.jit(fm.update_counts)
    counts = fm.init_counts(g, c)
    for start in range(0, n, batch):
        sl = slice(start, start + batch)
        yb, pb, gb = labels[sl], preds[sl], groups[sl]
        pad = batch - len(yb)
        mask = np.concatenate([np.ones(len(yb), bool), np.zeros(pad, bool)])
        # padding holds arbitrary (valid) ids that must not be counted
        yb, pb, gb = (np.concatenate([a, np.full(pad, 1)]) for a in (yb, pb, gb))
        counts = step(counts, jnp.asarray(yb), jnp.asarray(pb), jnp.asarray(gb), jnp.asarray(mask))
    chex.assert_trees_all_equal(counts, one_shot)
    assert int(counts.sum()) == n

    batched = fm.metrics_from_counts(counts)
    direct = fm.group_metrics(labels, preds, groups, g, num_classes=c)
    assert batched == direct  # same counts -> identical host-side floats


def test_update_counts_drops_out_of_range_ids_and_checks_shapes() -> None:
    counts = fm.update_counts(
        fm.init_counts(2, 2),
        jnp.array([0, 2, 1, 1]),  # label 2 out of range
        jnp.array([0, 1, -1, 1]),  # prediction -1 out of range
        jnp.array([0, 0, 1, 5]),  # group 5 out of range
    )
    np.testing.assert_array_equal(np.asarray(counts), [[[1, 0], [0, 0]], [[0, 0], [0, 0]]])
    with pytest.raises(ValueError, match="equal length"):
        fm.update_counts(fm.init_counts(2, 2), jnp.zeros(3, int), jnp.zeros(4, int), jnp.zeros(3, int))


def test_empty_group_error_names_the_group() -> None:
    labels = np.array([0, 1, 1, 0])
    groups = np.array([0, 0, 2, 2])
    with pytest.raises(ValueError, match=r"group 1 \('men'\) has no samples.*check the split"):
        fm.group_metrics(labels, labels, groups, 3, group_names=["women", "men", "other"])
    with pytest.raises(ValueError, match=r"group 1 has no samples"):
        fm.metrics_from_counts(fm.update_counts(fm.init_counts(3, 2), labels, labels, groups))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(labels=[0, 3, 1], predictions=[0, 1, 1], groups=[0, 1, 1], num_classes=3), r"labels out of range.*\[0, 3\)"),
        (dict(labels=[0, 1, 1], predictions=[0, 1, 2], groups=[0, 1, 1], num_classes=2), r"predictions out of range.*\[0, 2\)"),
        (dict(labels=[0, 1, 1], predictions=[0, 1, 1], groups=[0, 2, 1]), r"groups out of range.*groups\[1\] = 2.*\[0, 2\)"),
        (dict(labels=[0, 1, 1], predictions=[0, 1, 1], groups=[0, -1, 1]), r"groups out of range.*\[0, 2\)"),
        (dict(labels=[0, 1], predictions=[0, 1, 1], groups=[0, 1, 1]), r"equal length"),
        (dict(labels=[0.0, 1.0], predictions=[0, 1], groups=[0, 1]), r"labels must hold integer"),
        (dict(labels=[0, 1], predictions=[0, 1], groups=[0, 1], group_names=["a"]), r"group_names has 1"),
        (dict(labels=[0, 1], predictions=[0, 1], groups=[0, 1], positive_label=2), r"positive_label=2"),
    ],
)
def test_input_validation(kwargs: dict, pattern: str) -> None:
    kwargs = dict(kwargs)
    args = [np.asarray(kwargs.pop(k)) for k in ("labels", "predictions", "groups")]
    with pytest.raises(ValueError, match=pattern):
        fm.group_metrics(*args, num_groups=2, **kwargs)


def test_group_metrics_equals_manual_pipeline_and_infers_classes() -> None:
    labels, preds = _class_wise_example()
    manual = fm.metrics_from_counts(
        fm.update_counts(fm.init_counts(3, 3), labels, preds, labels)
    )
    assert fm.group_metrics(labels, preds, labels, 3) == manual
    # all-zero labels/predictions still infer a binary problem
    assert fm.group_metrics(np.zeros(4, int), np.zeros(4, int), np.array([0, 0, 1, 1]), 2)["num_classes"] == 2


def test_relative_and_paper_improvement() -> None:
    assert fm.relative_improvement(0.2, 0.15) == pytest.approx(0.25)
    assert fm.relative_improvement(0.1, 0.12) == pytest.approx(-0.2)
    with pytest.raises(ValueError, match="baseline metric is 0"):
        fm.relative_improvement(0.0, 0.1)
    with pytest.raises(ValueError, match="non-negative"):
        fm.relative_improvement(-0.1, 0.1)
    base = {"cwv": 0.04, "mcd": 0.5}
    ours = {"cwv": 0.01, "mcd": 0.4}
    # ((0.04 - 0.01) / 0.04 + (0.5 - 0.4) / 0.5) / 2 = (0.75 + 0.2) / 2
    assert fm.paper_improvement(base, ours) == pytest.approx(0.475)
    with pytest.raises(ValueError, match="'mcd'"):
        fm.paper_improvement({"cwv": 0.1}, ours)
