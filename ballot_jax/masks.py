"""Pruning masks as pytrees shaped like the Flax params.

A *mask* has the same tree structure as ``params``. A prunable leaf holds a ``bool`` array of
the parameter's shape (``True`` = the weight is kept); a leaf that is never pruned (biases,
batch-norm scales and offsets, and optionally the first convolution or the classifier) holds
``None``. Masks are plain pytrees, so they pass through ``jax.jit`` as ordinary arguments: a new
mask with the same prunable leaves never triggers a recompilation.

One place decides which leaves are prunable: :func:`prunable_filter`. Every method asks it.

Sparsity is always "the fraction of prunable weights that are zero"; density = 1 - sparsity.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any
Mask = PyTree
PathFilter = Callable[[tuple[str, ...], Any], bool]

STEM_NAME = "stem"
HEAD_NAME = "head"


def _is_none(x: Any) -> bool:
    return x is None


def path_str(path: Sequence[Any]) -> str:
    """Turns a jax key path into a readable ``a/b/kernel`` string."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def prunable_filter(*, keep_stem: bool = False, keep_head: bool = False) -> PathFilter:
    """Returns the default filter deciding which parameter leaves may be pruned.

    Every convolution and dense ``kernel`` (ndim >= 2) is prunable; biases and batch-norm
    parameters never are. ``keep_stem`` keeps the first convolution (module ``stem``) dense and
    ``keep_head`` keeps the classifier (module ``head``) dense.
    """

    def is_prunable(path: tuple[str, ...], leaf: Any) -> bool:
        if not path or path[-1] != "kernel" or np.ndim(leaf) < 2:
            return False
        if keep_stem and STEM_NAME in path[:-1]:
            return False
        if keep_head and HEAD_NAME in path[:-1]:
            return False
        return True

    return is_prunable


def _keys(path: Sequence[Any]) -> tuple[str, ...]:
    return tuple(path_str([k]) for k in path)


def init_mask(params: PyTree, is_prunable: PathFilter | None = None) -> Mask:
    """An all-kept mask: ``True`` arrays on prunable leaves, ``None`` elsewhere."""
    is_prunable = is_prunable or prunable_filter()
    return jax.tree_util.tree_map_with_path(
        # built on the host and placed like the params: no per-shape compilation of an eager jnp.ones
        lambda p, x: placed_like(np.ones(np.shape(x), np.bool_), x) if is_prunable(_keys(p), x) else None,
        params,
    )


def map_prunable(fn: Callable[..., Any], mask: Mask, *trees: PyTree) -> PyTree:
    """``fn(mask_leaf, *tree_leaves)`` on prunable leaves; ``None`` stays ``None``.

    ``trees`` must have the structure of ``mask`` (e.g. params, scores, votes).
    """
    return jax.tree.map(
        lambda m, *xs: None if m is None else fn(m, *xs), mask, *trees, is_leaf=_is_none
    )


def placed_like(host: np.ndarray, x: Any) -> jax.Array:
    """``host`` placed as an eager op on ``x`` would have placed its result: committed to ``x``'s
    devices and sharding if ``x`` is, else on the default device, uncommitted (a state mixing the
    two would compile the steps once per mix). Under a trace (``x`` a tracer) it is a constant."""
    if isinstance(x, jax.core.Tracer):
        return jnp.asarray(host)
    if getattr(x, "committed", False):
        return jax.device_put(host, x.sharding)
    return jax.device_put(host)  # jnp.asarray would compile a `stage` op per shape and dtype


def full_like_mask(mask: Mask, like: PyTree, value: Any, dtype: Any) -> PyTree:
    """``value``-filled arrays of ``dtype`` shaped like ``like``'s prunable leaves (``None`` elsewhere).

    Built on the host and placed like the ``like`` leaf (same devices and sharding): an eager
    ``jnp.full`` would compile once per leaf shape. Inside a trace it is ``jnp.full``.
    """

    def one(m: Any, x: Any) -> Any:
        if isinstance(x, jax.core.Tracer):
            return jnp.full(jnp.shape(x), value, dtype)
        return placed_like(np.full(np.shape(x), value, dtype), x)

    return map_prunable(one, mask, like)


def apply_mask(params: PyTree, mask: Mask) -> PyTree:
    """Zeroes the pruned weights: ``p * m`` on prunable leaves, other leaves unchanged.

    Inside a trace it is one nested compiled function for the whole tree; called on concrete
    arrays (a stage's new mask) it selects on the host, placing each result like its param, the
    same values without a compilation per tree structure (a select is exact either way).
    """
    if is_concrete(*jax.tree.leaves((params, mask))):
        def host(m: Any, p: Any) -> Any:
            if m is None:
                return p
            w = np.asarray(p)
            return placed_like(np.where(np.asarray(m), w, np.zeros((), w.dtype)), p)

        return jax.tree.map(host, mask, params, is_leaf=_is_none)
    return _apply_mask_compiled(params, mask)


@jax.jit
def _apply_mask_compiled(params: PyTree, mask: Mask) -> PyTree:
    return jax.tree.map(
        lambda m, p: p if m is None else jnp.where(m, p, jnp.zeros_like(p)),
        mask,
        params,
        is_leaf=_is_none,
    )


def prunable_leaves(tree: PyTree, mask: Mask) -> list[Any]:
    """The leaves of ``tree`` where ``mask`` is not ``None``, in tree order."""
    flags = jax.tree.leaves(jax.tree.map(lambda m: m is not None, mask, is_leaf=_is_none))
    leaves = jax.tree.leaves(tree, is_leaf=_is_none)
    if len(flags) != len(leaves):
        raise ValueError(
            f"tree has {len(leaves)} leaves but the mask has {len(flags)}: they must be shaped alike"
        )
    return [x for f, x in zip(flags, leaves) if f]


def layer_names(mask: Mask) -> list[str]:
    """Path strings of the prunable leaves, in tree order."""
    named = jax.tree_util.tree_flatten_with_path(mask, is_leaf=_is_none)[0]
    return [path_str(p) for p, m in named if m is not None]


def count(mask: Mask) -> dict[str, Any]:
    """Kept and total weights per prunable layer and overall (host-side integers).

    Returns ``{"layers": {name: (kept, total)}, "kept": K, "total": N, "density": K/N,
    "sparsity": 1 - K/N}``.
    """
    names = layer_names(mask)
    leaves = prunable_leaves(mask, mask)
    kept = [int(np.asarray(m).sum()) for m in leaves]
    total = [int(np.size(m)) for m in leaves]
    K, N = sum(kept), sum(total)
    density = K / N if N else 1.0
    return {
        "layers": {n: (k, t) for n, k, t in zip(names, kept, total)},
        "kept": K,
        "total": N,
        "density": density,
        "sparsity": 1.0 - density,
    }


def sparsity(mask: Mask) -> float:
    """Fraction of prunable weights removed: 1 - Σ_l kept_l / Σ_l n_l."""
    return count(mask)["sparsity"]


def zero_violations(params: PyTree, mask: Mask) -> int:
    """Number of pruned weights that are not exactly zero (0 when the mask is respected)."""
    leaves = prunable_leaves(params, mask)
    masks = prunable_leaves(mask, mask)
    return int(sum(int(np.count_nonzero(np.asarray(p)[~np.asarray(m)])) for p, m in zip(leaves, masks)))


def check_sparsity(value: float, name: str = "sparsity") -> float:
    """Validates a target sparsity in [0, 1); returns it as float."""
    value = float(value)
    if not (0.0 <= value < 1.0) or math.isnan(value):
        raise ValueError(
            f"{name}={value!r} is outside [0, 1): it is the fraction of prunable weights removed "
            "(e.g. 0.95 keeps 5%)."
        )
    return value


# ---------------------------------------------------------------------------------------------
# Top-k selection
# ---------------------------------------------------------------------------------------------


def _keep_top_traced(scores: jnp.ndarray, k: jnp.ndarray, tiebreak: jnp.ndarray | None = None) -> jnp.ndarray:
    """:func:`_keep_top` as XLA operations (a stable sort), for traced inputs."""
    s = jnp.where(jnp.isnan(scores), -jnp.inf, scores)
    if tiebreak is None:
        order = jnp.argsort(-s, stable=True)
    else:
        t = jnp.where(jnp.isnan(tiebreak), -jnp.inf, tiebreak)
        order = jnp.lexsort((-t, -s))  # last key is primary; lexsort is stable
    ranks = jnp.zeros_like(order).at[order].set(jnp.arange(order.size, dtype=order.dtype))
    return ranks < k


def _first_largest(values: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` largest ``values`` (no NaN), ties by position: the k-th largest
    value found by ``np.partition`` (linear time) instead of sorting everything."""
    n = values.size
    if k <= 0:
        return np.zeros(n, bool)
    if k >= n:
        return np.ones(n, bool)
    threshold = np.partition(values, n - k)[n - k]
    above = values > threshold
    at = values == threshold
    return above | (at & (np.cumsum(at) <= k - np.count_nonzero(above)))


def _keep_top_host(scores: np.ndarray, k: int, tiebreak: np.ndarray | None = None) -> np.ndarray:
    """:func:`_keep_top` in NumPy, for concrete inputs: the same mask as the sort, in linear time."""
    s = np.where(np.isnan(scores), -np.inf, scores)
    keep = _first_largest(s, k)
    if tiebreak is None or k <= 0 or k >= s.size:
        return keep
    # Among the entries equal to the threshold, the tiebreak decides, then position.
    threshold = s[keep].min()
    at = np.flatnonzero(s == threshold)
    need = k - np.count_nonzero(s > threshold)
    t = np.asarray(tiebreak)[at]
    chosen = at[_first_largest(np.where(np.isnan(t), -np.inf, t), need)]
    keep[at] = False
    keep[chosen] = True
    return keep


def is_concrete(*xs: Any) -> bool:
    """Every ``x`` is a host value or a jax.Array this process can read (not a tracer, not spread
    over other processes)."""
    return all(not isinstance(x, jax.core.Tracer) and getattr(x, "is_fully_addressable", True) for x in xs)


def _keep_top(scores: jnp.ndarray, k: jnp.ndarray, tiebreak: jnp.ndarray | None = None) -> jnp.ndarray:
    """Boolean mask keeping exactly ``k`` largest entries of a flat vector.

    NaN counts as -inf. Ties are broken by ``tiebreak`` (larger wins) when given, then by
    position (earlier index wins), so the same inputs always give the same mask. ``k`` may be a
    traced integer. Concrete inputs are selected on the host (``np.partition``, linear time: 0.04 s
    for 11M values, where XLA:CPU's stable sort takes 4 s);
    traced ones by a stable sort; both give the same mask (``tests/test_masks.py``).
    """
    if is_concrete(scores, k, tiebreak):
        t = None if tiebreak is None else np.asarray(tiebreak)
        return placed_like(_keep_top_host(np.asarray(scores), int(k), t), scores)
    return _keep_top_traced(scores, k, tiebreak)


def topk_global(scores: PyTree, mask: Mask, k: int | jnp.ndarray) -> Mask:
    """Keeps the ``k`` highest scores across all prunable layers (one global threshold).

    Exactly ``k`` weights are kept (ties by position in the flattened tree). Entries where the
    current ``mask`` is ``False`` are never selected while enough kept ones remain: pass
    ``-inf`` scores there to keep pruned weights pruned. Jittable; ``k`` may be traced.
    """
    leaves = prunable_leaves(scores, mask)
    if is_concrete(k, *leaves):  # on the host: no eager XLA concatenate, sort and slices
        flat = np.concatenate([np.ravel(np.asarray(x, np.float32)) for x in leaves])
        keep_host = _keep_top_host(flat, int(k))
        sizes = np.cumsum([np.size(x) for x in leaves])[:-1]
        # placed like the mask it refines (scores may be host arrays)
        out = [placed_like(part.reshape(np.shape(x)), m)
               for part, x, m in zip(np.split(keep_host, sizes), leaves, prunable_leaves(mask, mask))]
        return _unflatten_prunable(mask, out)
    flat = jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])
    keep = _keep_top(flat, jnp.asarray(k))
    out, start = [], 0
    for x in leaves:
        out.append(keep[start : start + x.size].reshape(x.shape))
        start += x.size
    return _unflatten_prunable(mask, out)


def topk_per_layer(scores: PyTree, quotas: PyTree, tiebreak: PyTree | None = None) -> Mask:
    """Keeps, in each prunable layer l, exactly ``quotas[l]`` highest-scoring weights.

    ``quotas`` is a tree shaped like the mask with integer leaves (``None`` where not
    prunable). Ties are broken by the optional ``tiebreak`` tree (larger wins), then by
    position. Jittable; quotas may be traced.
    """
    if is_concrete(*jax.tree.leaves((scores, quotas, tiebreak))):  # on the host, leaf by leaf
        def host(q, s, t=None):
            if q is None:
                return None
            t = None if t is None else np.ravel(np.asarray(t))
            return placed_like(_keep_top_host(np.ravel(np.asarray(s)), int(q), t).reshape(np.shape(s)), s)

        trees = (quotas, scores) if tiebreak is None else (quotas, scores, tiebreak)
        return jax.tree.map(host, *trees, is_leaf=_is_none)
    if tiebreak is None:
        return jax.tree.map(
            lambda q, s: None if q is None else _keep_top(jnp.ravel(s), q).reshape(jnp.shape(s)),
            quotas,
            scores,
            is_leaf=_is_none,
        )
    return jax.tree.map(
        lambda q, s, t: None if q is None else _keep_top(jnp.ravel(s), q, jnp.ravel(t)).reshape(jnp.shape(s)),
        quotas,
        scores,
        tiebreak,
        is_leaf=_is_none,
    )


def _unflatten_prunable(mask: Mask, values: list[Any]) -> Mask:
    it = iter(values)
    return jax.tree.map(lambda m: None if m is None else next(it), mask, is_leaf=_is_none)


@jax.jit
def magnitude_scores(params: PyTree, mask: Mask) -> PyTree:
    """|w| on kept weights and -inf on pruned ones (so they stay pruned under top-k)."""
    return map_prunable(lambda m, p: jnp.where(m, jnp.abs(p), -jnp.inf), mask, params)


def global_magnitude_mask(params: PyTree, mask: Mask, density: float) -> Mask:
    """Global-magnitude mask keeping ``round(density * N)`` of all N prunable weights.

    Weights already pruned by ``mask`` stay pruned (the target density is of all prunable
    weights, so it must not exceed the current mask's density).
    """
    total = count(mask)["total"]
    k = int(round(density * total))
    if is_concrete(*jax.tree.leaves((params, mask))):  # |w| on the host: exact, nothing to compile
        scores = map_prunable(lambda m, p: np.where(np.asarray(m), np.abs(np.asarray(p)), np.float32(-np.inf)),
                              mask, params)
        return topk_global(scores, mask, k)
    return topk_global(magnitude_scores(params, mask), mask, k)


# ---------------------------------------------------------------------------------------------
# Per-layer densities and quotas
# ---------------------------------------------------------------------------------------------


def quotas_from_densities(mask: Mask, densities: PyTree, *, total_density: float | None = None) -> PyTree:
    """Integer per-layer quotas k_l ≈ density_l · n_l.

    With ``total_density`` given, the rounding is done by largest remainder so that
    Σ_l k_l = round(total_density · N) exactly, each k_l staying within [0, n_l]. Without it each
    layer is rounded on its own. Returns a tree of Python ints shaped like the mask.
    """
    sizes = [int(np.size(m)) for m in prunable_leaves(mask, mask)]
    raw = [min(max(float(d), 0.0), 1.0) * n for d, n in zip(prunable_leaves(densities, mask), sizes)]
    if total_density is None:
        return _unflatten_prunable(mask, [int(round(r)) for r in raw])
    ks = [int(math.floor(r + 1e-9)) for r in raw]
    remainder = int(round(total_density * sum(sizes))) - sum(ks)
    # Largest fractional part first (ties by layer order) when adding, smallest when removing.
    order = sorted(range(len(ks)), key=lambda i: (-(raw[i] - ks[i]), i))
    step = 1 if remainder > 0 else -1
    candidates = order if step > 0 else order[::-1]
    while remainder != 0:
        moved = False
        for j in candidates:
            if remainder == 0:
                break
            if 0 <= ks[j] + step <= sizes[j]:
                ks[j] += step
                remainder -= step
                moved = True
        if not moved:
            raise ValueError(f"total_density={total_density} cannot be met within the layer sizes")
    return _unflatten_prunable(mask, ks)


def densities_of(mask: Mask) -> PyTree:
    """Per-layer density of an existing mask ("same per-layer densities as another mask")."""
    return map_prunable(lambda m: float(np.asarray(m).mean()), mask)


def quotas_of(mask: Mask) -> PyTree:
    """Per-layer kept counts of an existing mask, as a tree of ints."""
    return map_prunable(lambda m: int(np.asarray(m).sum()), mask)


def uniform_densities(mask: Mask, density: float) -> PyTree:
    """The same density in every prunable layer."""
    return map_prunable(lambda m: float(density), mask)


def erk_densities(mask: Mask, density: float, *, power_scale: float = 1.0) -> PyTree:
    """Erdős–Rényi-Kernel per-layer densities reaching ``density`` overall.

    Layer l gets density ε · (Σ dims / Π dims)^power_scale, with ε solved so that the kept
    count totals density · N. Layers whose density would exceed 1 are kept dense and ε is
    re-solved over the rest (the standard ERK construction of RigL).
    """
    shapes = [np.shape(m) for m in prunable_leaves(mask, mask)]
    sizes = np.array([int(np.prod(s)) for s in shapes], dtype=np.float64)
    raw = np.array([(sum(s) / np.prod(s)) ** power_scale for s in shapes], dtype=np.float64)
    dense = np.zeros(len(shapes), dtype=bool)
    target = density * sizes.sum()
    while True:
        budget = target - sizes[dense].sum()
        denom = (raw * sizes)[~dense].sum()
        eps = budget / denom if denom > 0 else 0.0
        d = np.where(dense, 1.0, eps * raw)
        over = (d > 1.0) & ~dense
        if not over.any():
            break
        dense |= over
    return _unflatten_prunable(mask, [float(min(max(x, 0.0), 1.0)) for x in d])


DISTRIBUTIONS = {
    "uniform": uniform_densities,
    "erk": erk_densities,
}


def layer_densities(mask: Mask, density: float, distribution: str) -> PyTree:
    """Per-layer densities from a named distribution (``uniform`` or ``erk``)."""
    try:
        fn = DISTRIBUTIONS[distribution]
    except KeyError:
        raise ValueError(
            f"unknown density distribution {distribution!r}; valid: {sorted(DISTRIBUTIONS)}"
        ) from None
    return fn(mask, density)


def distribution_quotas(mask: Mask, density: float, distribution: str) -> tuple[PyTree, PyTree]:
    """``(densities, quotas)`` of a named distribution (``uniform``/``erk``) reaching ``density``
    overall exactly (largest-remainder rounding, :func:`quotas_from_densities`)."""
    densities = layer_densities(mask, density, distribution)
    return densities, quotas_from_densities(mask, densities, total_density=density)


def uniform_scores(mask: Mask, seed_words: Sequence[int]) -> PyTree:
    """Mask-shaped float32 uniforms in [0, 1), drawn on the host by NumPy from ``seed_words``.

    Deterministic for given words (e.g. (seed, tag, step)); nothing to compile, unlike a
    per-layer ``jax.random`` draw. The one source of randomness of every random mask or score.
    """
    rng = np.random.default_rng([int(w) & 0xFFFFFFFF for w in seed_words])
    return map_prunable(lambda m: jnp.asarray(rng.random(np.shape(m), dtype=np.float32)), mask)


def random_mask(mask: Mask, quotas: PyTree, seed_words: Sequence[int]) -> Mask:
    """A uniformly random mask keeping exactly ``quotas[l]`` weights of every prunable layer."""
    return topk_per_layer(uniform_scores(mask, seed_words), quotas)


def none_like(tree: PyTree) -> PyTree:
    """A tree of ``None`` shaped like ``tree`` (an "all kept, nothing prunable" mask)."""
    return jax.tree.map(lambda _: None, tree)


def to_numpy(mask: Mask) -> dict[str, np.ndarray]:
    """A flat ``{layer path: bool ndarray}`` dict, e.g. for saving or comparing masks."""
    return {n: np.asarray(m) for n, m in zip(layer_names(mask), prunable_leaves(mask, mask))}


def masks_equal(a: Mask, b: Mask) -> bool:
    """True when two masks have the same prunable layers and identical values."""
    na, nb = to_numpy(a), to_numpy(b)
    return na.keys() == nb.keys() and all(np.array_equal(na[k], nb[k]) for k in na)


def overlap(a: Mask, b: Mask) -> dict[str, float]:
    """How much of mask ``b`` mask ``a`` keeps: ``shared`` kept weights, ``share_of_b`` =
    shared / kept(b) (with equal quotas, the share of the ticket kept), ``jaccard`` = shared / union."""
    la, lb = prunable_leaves(a, a), prunable_leaves(b, b)
    shared = sum(int(np.sum(np.asarray(x) & np.asarray(y))) for x, y in zip(la, lb))
    union = sum(int(np.sum(np.asarray(x) | np.asarray(y))) for x, y in zip(la, lb))
    kept_b = sum(int(np.sum(np.asarray(y))) for y in lb)
    return {"shared": float(shared), "share_of_b": shared / max(kept_b, 1), "jaccard": shared / max(union, 1)}


def summary(mask: Mask) -> Mapping[str, Any]:
    """JSON-friendly per-layer densities and the overall sparsity of a mask."""
    c = count(mask)
    return {
        "sparsity": c["sparsity"],
        "kept": c["kept"],
        "total": c["total"],
        "layers": {n: {"kept": k, "total": t, "density": k / t} for n, (k, t) in c["layers"].items()},
    }
