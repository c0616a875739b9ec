"""Group fairness metrics computed from a per-group confusion-count tensor.

Layer 0 of ``ballot_jax``: this module works on arrays only and imports nothing
from the rest of the package.

A *group* is any integer id in ``[0, num_groups)``. It may be the true label
(class-wise fairness, the Ballot paper's default: ``groups = labels``), a
sensitive attribute, or an intersection of both encoded as a single id
(e.g. ``attr * num_classes + label``).

Evaluation is a single pass over the data: start from :func:`init_counts`, fold
each batch in with :func:`update_counts` (jittable, runs on device), and turn
the final tensor into plain Python numbers with :func:`metrics_from_counts`.
:func:`group_metrics` does all three for in-memory arrays, with host-side input
validation.

The count tensor ``counts`` has shape ``[G, C, C]`` and is indexed
``counts[group, true_label, predicted_label]``. Notation used below::

    n_g       = sum_{y, p} counts[g, y, p]          (samples in group g)
    correct_g = sum_y counts[g, y, y]                (trace of counts[g])
    acc_g     = correct_g / n_g                      (per-group accuracy)
    acc       = sum_g correct_g / sum_g n_g          (overall accuracy)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "init_counts",
    "update_counts",
    "metrics_from_counts",
    "group_metrics",
    "relative_improvement",
    "paper_improvement",
]

_COUNT_DTYPE = jnp.int32
EXCLUDED_EXAMPLES = 10  # reasons kept in equalized_odds_excluded (the count is kept in full)


# ---------------------------------------------------------------------------
# Device side: accumulating counts
# ---------------------------------------------------------------------------


def init_counts(num_groups: int, num_classes: int) -> jnp.ndarray:
    """Returns an all-zero int32 count tensor of shape ``[num_groups, num_classes, num_classes]``.

    Indexed ``[group, true_label, predicted_label]``.
    """
    num_groups = _positive_int(num_groups, "num_groups")
    num_classes = _positive_int(num_classes, "num_classes")
    return jax.device_put(np.zeros((num_groups, num_classes, num_classes), dtype=_COUNT_DTYPE))  # host-built: no compile


@jax.jit
def update_counts(
    counts: jnp.ndarray,
    labels: jnp.ndarray,
    predictions: jnp.ndarray,
    groups: jnp.ndarray,
    weights: jnp.ndarray | None = None,
) -> jnp.ndarray:
    """Adds one batch to ``counts`` and returns the new tensor (jitted).

    ``counts[g, y, p] += sum_i weights_i * [groups_i == g, labels_i == y,
    predictions_i == p]``, computed with one ``segment_sum`` over the flattened
    index ``(g * C + y) * C + p``. ``G`` and ``C`` are read from ``counts.shape``.

    Args:
      counts: int tensor ``[G, C, C]`` from :func:`init_counts` or a previous call.
      labels: int ``[B]`` true labels in ``[0, C)``.
      predictions: int ``[B]`` predicted labels in ``[0, C)`` (argmax of logits).
      groups: int ``[B]`` group ids in ``[0, G)``.
      weights: optional ``[B]`` 0/1 mask (bool or numeric); examples with weight 0
        are not counted, so a padded final batch can be passed as-is. Weights are
        cast to the integer count dtype, so they must be 0 or 1.

    Ids are not checked for range here (that needs a host sync). An example whose
    label, prediction or group is out of range is silently *dropped* rather than
    miscounted; validate on the host (as :func:`group_metrics` does) if that
    matters. Counts are int32, so one tensor holds at most 2**31 - 1 per cell.
    """
    if counts.ndim != 3 or counts.shape[1] != counts.shape[2]:
        raise ValueError(
            f"counts must have shape [num_groups, num_classes, num_classes]; got {counts.shape}."
        )
    num_groups, num_classes, _ = counts.shape
    arrays = {"labels": labels, "predictions": predictions, "groups": groups}
    if weights is not None:
        arrays["weights"] = weights
    shapes = {name: tuple(jnp.shape(a)) for name, a in arrays.items()}
    if any(len(s) != 1 for s in shapes.values()) or len(set(shapes.values())) != 1:
        raise ValueError(f"labels, predictions, groups (and weights) must be 1-D of equal length; got {shapes}.")

    labels = jnp.asarray(labels).astype(jnp.int32)
    predictions = jnp.asarray(predictions).astype(jnp.int32)
    groups = jnp.asarray(groups).astype(jnp.int32)
    if weights is None:
        w = jnp.ones(labels.shape, dtype=counts.dtype)
    else:
        w = jnp.asarray(weights).astype(counts.dtype)

    in_range = (
        (labels >= 0) & (labels < num_classes)
        & (predictions >= 0) & (predictions < num_classes)
        & (groups >= 0) & (groups < num_groups)
    )
    w = jnp.where(in_range, w, jnp.zeros_like(w))
    flat = (groups * num_classes + labels) * num_classes + predictions
    flat = jnp.where(in_range, flat, 0)  # weight is 0 there, so index 0 is harmless
    added = jax.ops.segment_sum(w, flat, num_segments=num_groups * num_classes * num_classes)
    return counts + added.reshape(counts.shape).astype(counts.dtype)


# ---------------------------------------------------------------------------
# Host side: metrics from counts
# ---------------------------------------------------------------------------


def metrics_from_counts(
    counts: Any,
    *,
    group_names: Sequence[str] | None = None,
    positive_label: int = 1,
) -> dict[str, Any]:
    """Turns a ``[G, C, C]`` count tensor into a JSON-serialisable metrics dict.

    Accuracy-based metrics (any number of classes):

    - ``accuracy``: ``acc = sum_g correct_g / sum_g n_g`` (over all samples).
    - ``per_group_accuracy``: ``[acc_g]`` with ``acc_g = correct_g / n_g``.
    - ``per_group_count``: ``[n_g]`` (ints).
    - ``min_class_recall``: the lowest recall over the classes present (0: a class is never
      predicted correctly; the first thing to check before comparing fairness).
    - ``cwv``: ``(1/G) * sum_g (acc_g - acc)**2`` -- class-wise variance, centred
      on the *overall* accuracy ``acc`` (not on the mean of the ``acc_g``).
    - ``mcd``: ``max_g acc_g - min_g acc_g`` (maximum class difference).
    - ``worst_group_accuracy`` / ``best_group_accuracy``: ``min_g acc_g`` /
      ``max_g acc_g``; ``worst_group`` / ``best_group``: the name of that group
      (first one on ties).
    - ``accuracy_frame``: fairlearn ``MetricFrame(accuracy_score)``-style summary,
      a dict with ``overall`` (= ``accuracy``), ``by_group`` (name -> acc_g),
      ``group_min``, ``group_max`` and ``difference`` (= max - min, i.e.
      ``method="between_groups"``).

    Prediction-rate metrics (fairlearn ``method="between_groups"`` definitions):

    - ``demographic_parity_difference``: ``max_g S_g - min_g S_g`` with selection
      rate ``S_g = P(yhat = pos | g)``.
    - ``true_positive_rate_difference``: spread over groups of
      ``TPR_g = P(yhat = pos | y = pos, g)``.
    - ``false_positive_rate_difference``: spread over groups of
      ``FPR_g = P(yhat = pos | y != pos, g)``.
    - ``equalized_odds_difference``: ``max(TPR difference, FPR difference)``.

    With ``C == 2`` the positive class is ``positive_label`` and these equal
    fairlearn's ``demographic_parity_difference`` / ``equalized_odds_difference``;
    the dict then also has ``per_group_selection_rate``,
    ``per_group_true_positive_rate`` and ``per_group_false_positive_rate``
    (``None`` where undefined). With ``C > 2`` each quantity is computed
    one-vs-rest for every class ``k`` as the positive class and the *maximum over
    k* is reported under the same keys (``positive_label`` is then ignored); for
    ``C == 2`` the one-vs-rest maximum equals the positive-class value, so the
    definition is consistent. With ``C == 1`` these keys are omitted.

    Groups without positives / negatives (equalized odds): ``TPR_g`` is undefined
    for a group with no true positives-class samples and ``FPR_g`` for a group
    with no negatives. Such a group is *left out of that term only* (the spread is
    taken over the remaining groups; a spread over fewer than two groups is 0.0),
    the number of exclusions is ``equalized_odds_excluded_count`` and the first
    :data:`EXCLUDED_EXAMPLES` human-readable reasons are listed in
    ``equalized_odds_excluded`` (with class-wise groups there are C² of them). Note fairlearn instead scores such a group's rate
    as 0, which distorts the difference; the two agree whenever no group is
    excluded.

    Also returned: ``num_groups``, ``num_classes``, ``num_samples``,
    ``group_names`` (given names, or ``"0", "1", ...``).

    Args:
      counts: ``[G, C, C]`` counts (jax or numpy array) indexed
        ``[group, true_label, predicted_label]``.
      group_names: optional ``G`` display names used in messages and outputs.
      positive_label: positive class for binary (``C == 2``) labels.

    Raises:
      ValueError: on a malformed tensor, wrong number of names, a bad
        ``positive_label``, or an empty group (``n_g == 0``), naming the group.
    """
    c = _validated_counts(counts)
    num_groups, num_classes, _ = c.shape
    names = _group_names(group_names, num_groups)
    named = group_names is not None
    n_g = c.sum(axis=(1, 2))
    _check_no_empty_group(n_g, names, named)
    out: dict[str, Any] = {
        "num_groups": int(num_groups),
        "num_classes": int(num_classes),
        "num_samples": int(n_g.sum()),
        "group_names": names,
    }
    out.update(_accuracy_metrics(c, n_g, names))
    if num_classes >= 2:
        out.update(_rate_metrics(c, n_g, names, named, positive_label))
    return out


def _validated_counts(counts: Any) -> np.ndarray:
    """The ``[G, C, C]`` count tensor as int64 numpy; raises on a malformed one."""
    c = np.asarray(jax.device_get(counts))
    if c.ndim != 3 or c.shape[1] != c.shape[2]:
        raise ValueError(
            f"counts must have shape [num_groups, num_classes, num_classes]; got {c.shape}."
        )
    if not np.issubdtype(c.dtype, np.integer):
        raise ValueError(f"counts must be an integer tensor; got dtype {c.dtype}.")
    if (c < 0).any():
        raise ValueError("counts contains negative entries; it must hold sample counts.")
    return c.astype(np.int64)


def _check_no_empty_group(n_g: np.ndarray, names: list[str], named: bool) -> None:
    """Raises naming the first group without samples: its accuracy (and so every group metric) is undefined."""
    empty = np.flatnonzero(n_g == 0)
    if empty.size:
        raise ValueError(
            f"group {_describe(int(empty[0]), names, named)} has no samples (n_g == 0), "
            "so its accuracy is undefined. Every group id in "
            f"[0, {len(n_g)}) must occur in the evaluated data: check the split / "
            "evaluation set, or choose a grouping whose groups are all present "
            "(drop or merge this group and renumber the ids)."
        )


def _accuracy_metrics(c: np.ndarray, n_g: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Overall and per-group accuracy, lowest class recall, CWV, MCD, worst/best group, accuracy frame."""
    correct_g = np.trace(c, axis1=1, axis2=2)
    acc = float(correct_g.sum() / int(n_g.sum()))
    acc_g = correct_g / n_g
    per_group_acc = [float(a) for a in acc_g]
    worst, best = int(np.argmin(acc_g)), int(np.argmax(acc_g))
    return {
        "accuracy": acc,
        "per_group_accuracy": per_group_acc,
        "per_group_count": [int(n) for n in n_g],
        "min_class_recall": _min_class_recall(c),
        "cwv": float(np.mean((acc_g - acc) ** 2)),
        "mcd": float(acc_g[best] - acc_g[worst]),
        "worst_group_accuracy": float(acc_g[worst]),
        "best_group_accuracy": float(acc_g[best]),
        "worst_group": names[worst],
        "best_group": names[best],
        "accuracy_frame": {
            "overall": acc,
            "by_group": dict(zip(names, per_group_acc)),
            "group_min": float(acc_g[worst]),
            "group_max": float(acc_g[best]),
            "difference": float(acc_g[best] - acc_g[worst]),
        },
    }


def _min_class_recall(c: np.ndarray) -> float:
    """The lowest recall over the classes present (absent classes are left out; 0.0 if none)."""
    n_c = c.sum(axis=(0, 2))
    correct_c = np.einsum("gcc->c", c)
    present = n_c > 0
    return float(np.min(correct_c[present] / n_c[present])) if present.any() else 0.0


def _one_vs_rest_rates(c: np.ndarray, n_g: np.ndarray, k: int) -> tuple[list[float], list[float | None],
                                                                         list[float | None]]:
    """Per-group selection rate, TPR and FPR with ``k`` as the positive class (``None``: undefined)."""
    num_groups = len(n_g)
    pred_k = c[:, :, k].sum(axis=1)  # [G] predicted k
    pos_k = c[:, k, :].sum(axis=1)  # [G] truly k
    neg_k = n_g - pos_k
    tp = c[:, k, k]
    fp = pred_k - tp
    sel = [float(s) for s in pred_k / n_g]
    tpr = [float(tp[g] / pos_k[g]) if pos_k[g] > 0 else None for g in range(num_groups)]
    fpr = [float(fp[g] / neg_k[g]) if neg_k[g] > 0 else None for g in range(num_groups)]
    return sel, tpr, fpr


def _eo_exclusions(tpr: list[float | None], fpr: list[float | None], k: int, names: list[str],
                   named: bool) -> list[str]:
    """Why each group is left out of the TPR / FPR term of positive class ``k`` (one line per exclusion)."""
    excluded = []
    for g, (t, f) in enumerate(zip(tpr, fpr)):
        who = _describe(g, names, named)
        if t is None:
            excluded.append(
                f"group {who} has no samples with true label {k}: TPR undefined, "
                f"excluded from the TPR term for positive class {k}"
            )
        if f is None:
            excluded.append(
                f"group {who} has no samples with true label != {k}: FPR undefined, "
                f"excluded from the FPR term for positive class {k}"
            )
    return excluded


def _rate_metrics(c: np.ndarray, n_g: np.ndarray, names: list[str], named: bool,
                  positive_label: int) -> dict[str, Any]:
    """Demographic-parity and equalized-odds differences (with their exclusions); binary: per-group rates."""
    num_classes = c.shape[1]
    binary = num_classes == 2
    classes = [_check_positive_label(positive_label, num_classes)] if binary else list(range(num_classes))
    out: dict[str, Any] = {}
    dp = tpr_diff = fpr_diff = 0.0
    excluded: list[str] = []
    for k in classes:
        sel, tpr, fpr = _one_vs_rest_rates(c, n_g, k)
        excluded += _eo_exclusions(tpr, fpr, k, names, named)
        dp = max(dp, _spread(sel))
        tpr_diff = max(tpr_diff, _spread([t for t in tpr if t is not None]))
        fpr_diff = max(fpr_diff, _spread([f for f in fpr if f is not None]))
        if binary:
            out.update(positive_label=int(k), per_group_selection_rate=sel, per_group_true_positive_rate=tpr,
                       per_group_false_positive_rate=fpr)
    out["demographic_parity_difference"] = dp
    out["true_positive_rate_difference"] = tpr_diff
    out["false_positive_rate_difference"] = fpr_diff
    out["equalized_odds_difference"] = max(tpr_diff, fpr_diff)
    out["equalized_odds_excluded_count"] = len(excluded)
    out["equalized_odds_excluded"] = excluded[:EXCLUDED_EXAMPLES]  # C² of them with class-wise groups: a few
    return out


def group_metrics(
    labels: Any,
    predictions: Any,
    groups: Any,
    num_groups: int,
    *,
    num_classes: int | None = None,
    group_names: Sequence[str] | None = None,
    positive_label: int = 1,
) -> dict[str, Any]:
    """Computes :func:`metrics_from_counts` for whole in-memory arrays.

    Equivalent to ``metrics_from_counts(update_counts(init_counts(G, C), labels,
    predictions, groups), ...)`` after validating inputs on the host.

    Args:
      labels: int ``[N]`` true labels.
      predictions: int ``[N]`` predicted labels.
      groups: int ``[N]`` group ids in ``[0, num_groups)``; for class-wise
        fairness pass ``groups=labels`` and ``num_groups=num_classes``.
      num_groups: number of groups ``G``.
      num_classes: number of classes ``C``; if ``None``, inferred as
        ``max(max(labels), max(predictions)) + 1`` (at least 2).
      group_names: optional ``G`` display names.
      positive_label: positive class when ``C == 2``.

    Raises:
      ValueError: mismatched / non-1-D shapes, empty input, non-integer ids, ids
        out of range (the message names the array and the valid range), or any
        error from :func:`metrics_from_counts` (e.g. an empty group).
    """
    num_groups = _positive_int(num_groups, "num_groups")
    arrays = {
        "labels": np.asarray(jax.device_get(labels)),
        "predictions": np.asarray(jax.device_get(predictions)),
        "groups": np.asarray(jax.device_get(groups)),
    }
    shapes = {k: a.shape for k, a in arrays.items()}
    if any(len(s) != 1 for s in shapes.values()) or len(set(shapes.values())) != 1:
        raise ValueError(f"labels, predictions and groups must be 1-D of equal length; got shapes {shapes}.")
    if arrays["labels"].size == 0:
        raise ValueError("labels, predictions and groups are empty; need at least one sample.")
    for name, a in arrays.items():
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
            raise ValueError(f"{name} must hold integer ids; got dtype {a.dtype}.")
        arrays[name] = a.astype(np.int64)

    if num_classes is None:
        num_classes = max(int(arrays["labels"].max()), int(arrays["predictions"].max())) + 1
        num_classes = max(num_classes, 2)
    num_classes = _positive_int(num_classes, "num_classes")

    for name, upper in (("labels", num_classes), ("predictions", num_classes), ("groups", num_groups)):
        a = arrays[name]
        bad = (a < 0) | (a >= upper)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"{name} out of range: {name}[{i}] = {int(a[i])} ({int(bad.sum())} bad entries); "
                f"valid range is [0, {upper})."
            )

    counts = update_counts(
        init_counts(num_groups, num_classes),
        jnp.asarray(arrays["labels"], dtype=jnp.int32),
        jnp.asarray(arrays["predictions"], dtype=jnp.int32),
        jnp.asarray(arrays["groups"], dtype=jnp.int32),
    )
    return metrics_from_counts(counts, group_names=group_names, positive_label=positive_label)


# ---------------------------------------------------------------------------
# Paper headline numbers
# ---------------------------------------------------------------------------


def relative_improvement(base: float, ours: float) -> float:
    """Relative reduction of a lower-is-better metric: ``(base - ours) / base``.

    Positive means ``ours`` is fairer than ``base`` (e.g. 0.25 = 25% lower).

    Raises:
      ValueError: if either value is not finite, ``base`` is negative, or
        ``base == 0`` (the baseline is already perfectly fair, so a relative
        change is a division by zero; compare absolute values instead).
    """
    base, ours = float(base), float(ours)
    if not (np.isfinite(base) and np.isfinite(ours)):
        raise ValueError(f"relative_improvement needs finite values; got base={base}, ours={ours}.")
    if base == 0.0:
        raise ValueError(
            "relative_improvement is undefined when the baseline metric is 0: the baseline is "
            "already perfectly fair on this metric and (base - ours) / base divides by zero. "
            "Report the absolute values instead."
        )
    if base < 0.0:
        raise ValueError(
            f"relative_improvement expects a non-negative lower-is-better metric (like cwv or mcd); "
            f"got base={base}, for which the sign of the result would be inverted."
        )
    return (base - ours) / base


def paper_improvement(base_metrics: Mapping[str, Any], ours_metrics: Mapping[str, Any]) -> float:
    """Ballot's headline figure: mean of :func:`relative_improvement` over ``cwv`` and ``mcd``.

    ``(relative_improvement(base["cwv"], ours["cwv"])
    + relative_improvement(base["mcd"], ours["mcd"])) / 2``; the inputs are
    dicts as returned by :func:`metrics_from_counts` / :func:`group_metrics`.
    """
    terms = []
    for key in ("cwv", "mcd"):
        for label, m in (("base_metrics", base_metrics), ("ours_metrics", ours_metrics)):
            if key not in m:
                raise ValueError(
                    f"{label} has no '{key}' entry; pass dicts from metrics_from_counts/group_metrics."
                )
        terms.append(relative_improvement(base_metrics[key], ours_metrics[key]))
    return float(sum(terms) / len(terms))


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _positive_int(value: Any, name: str) -> int:
    """Checks that ``value`` is a positive integer and returns it as ``int``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    return int(value)


def _group_names(group_names: Sequence[str] | None, num_groups: int) -> list[str]:
    """Returns ``num_groups`` display names (defaults to the indices as strings)."""
    if group_names is None:
        return [str(g) for g in range(num_groups)]
    names = [str(n) for n in group_names]
    if len(names) != num_groups:
        raise ValueError(f"group_names has {len(names)} entries but there are {num_groups} groups.")
    return names


def _describe(g: int, names: list[str], named: bool) -> str:
    """Formats a group as ``2`` or ``2 ('female')`` for messages."""
    return f"{g} ({names[g]!r})" if named else str(g)


def _check_positive_label(positive_label: Any, num_classes: int) -> int:
    """Validates ``positive_label`` against ``[0, num_classes)``."""
    if isinstance(positive_label, bool) or not isinstance(positive_label, (int, np.integer)):
        raise ValueError(f"positive_label must be an integer; got {positive_label!r}.")
    if not 0 <= positive_label < num_classes:
        raise ValueError(f"positive_label={positive_label} out of range; valid range is [0, {num_classes}).")
    return int(positive_label)


def _spread(values: list[float]) -> float:
    """``max - min`` of ``values``; 0.0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    return float(max(values) - min(values))
