"""Tests of ballot_jax.masks: prunable filter, exact sparsity, top-k, densities, jit behaviour."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ballot_jax import masks, train


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "stem": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 3, 8)), jnp.float32)},
        "block": {
            "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 8, 16)), jnp.float32)},
            "bn": {"scale": jnp.ones(16), "bias": jnp.zeros(16)},
        },
        "head": {"kernel": jnp.asarray(rng.normal(size=(16, 10)), jnp.float32), "bias": jnp.zeros(10)},
    }


def test_default_filter_prunes_kernels_only():
    m = masks.init_mask(_params())
    assert masks.layer_names(m) == ["block/conv/kernel", "head/kernel", "stem/kernel"]
    assert m["block"]["bn"]["scale"] is None and m["head"]["bias"] is None


def test_keep_stem_and_head_options():
    m = masks.init_mask(_params(), masks.prunable_filter(keep_stem=True, keep_head=True))
    assert masks.layer_names(m) == ["block/conv/kernel"]


@pytest.mark.parametrize("sparsity", [0.0, 0.2, 0.5, 0.9, 0.95, 0.999])
def test_global_magnitude_exact_sparsity(sparsity):
    params = _params()
    m = masks.init_mask(params)
    total = masks.count(m)["total"]
    new = masks.global_magnitude_mask(params, m, 1.0 - sparsity)
    assert masks.count(new)["kept"] == int(round((1 - sparsity) * total))
    # the kept weights are the largest in magnitude
    kept = np.concatenate([np.abs(np.asarray(p))[np.asarray(k)].ravel() for p, k in
                           zip(masks.prunable_leaves(params, m), masks.prunable_leaves(new, m))])
    dropped = np.concatenate([np.abs(np.asarray(p))[~np.asarray(k)].ravel() for p, k in
                              zip(masks.prunable_leaves(params, m), masks.prunable_leaves(new, m))])
    if kept.size and dropped.size:
        assert kept.min() >= dropped.max()


def test_pruned_weights_stay_pruned_in_iterative_pruning():
    params = _params()
    m = masks.init_mask(params)
    first = masks.global_magnitude_mask(params, m, 0.8)
    # Make pruned weights huge: they must still not come back.
    boosted = masks.map_prunable(lambda k, p: jnp.where(k, p, 1e6), first, params)
    second = masks.global_magnitude_mask(boosted, first, 0.64)
    for a, b in zip(masks.prunable_leaves(first, m), masks.prunable_leaves(second, m)):
        assert not np.any(np.asarray(b) & ~np.asarray(a))
    assert masks.count(second)["kept"] == int(round(0.64 * masks.count(m)["total"]))


def test_topk_ties_are_deterministic_and_exact():
    scores = {"a": {"kernel": jnp.zeros((4, 5))}, "b": {"kernel": jnp.zeros((5, 2))}}
    m = masks.init_mask(scores)
    out1 = masks.topk_global(scores, m, 7)
    out2 = masks.topk_global(scores, m, 7)
    assert masks.masks_equal(out1, out2)
    assert masks.count(out1)["kept"] == 7
    # earlier positions win ties
    assert np.asarray(out1["a"]["kernel"]).ravel()[:7].all()


def test_topk_treats_nan_as_lowest():
    scores = {"a": {"kernel": jnp.array([[jnp.nan, 1.0], [2.0, jnp.nan]])}}
    out = masks.topk_global(scores, masks.init_mask(scores), 2)
    np.testing.assert_array_equal(np.asarray(out["a"]["kernel"]), [[False, True], [True, False]])


def test_topk_per_layer_quotas():
    params = _params()
    m = masks.init_mask(params)
    quotas = masks.quotas_from_densities(m, masks.uniform_densities(m, 0.3), total_density=0.3)
    out = masks.topk_per_layer(masks.magnitude_scores(params, m), quotas)
    c = masks.count(out)
    assert c["kept"] == int(round(0.3 * c["total"]))
    for name, (k, t) in c["layers"].items():
        assert abs(k - 0.3 * t) <= 1, name


def test_erk_reaches_target_and_caps_at_one():
    m = masks.init_mask(_params())
    d = masks.erk_densities(m, 0.1)
    sizes = [np.size(x) for x in masks.prunable_leaves(m, m)]
    dens = masks.prunable_leaves(d, m)
    assert all(0.0 <= x <= 1.0 for x in dens)
    np.testing.assert_allclose(sum(a * b for a, b in zip(dens, sizes)) / sum(sizes), 0.1, rtol=1e-6)
    # smaller layers (more sum/prod) get higher density than the largest layer
    assert dens[2] > dens[0]  # stem (3x3x3x8) vs block conv (3x3x8x16)
    q = masks.quotas_from_densities(m, d, total_density=0.1)
    assert sum(masks.prunable_leaves(q, m)) == int(round(0.1 * sum(sizes)))


def test_random_mask_matches_densities_of_another_mask():
    params = _params()
    m = masks.init_mask(params)
    ref = masks.global_magnitude_mask(params, m, 0.25)
    rnd = masks.random_mask(m, masks.quotas_of(ref), (3,))
    assert masks.count(rnd)["layers"] == masks.count(ref)["layers"]
    assert not masks.masks_equal(rnd, ref)
    again = masks.random_mask(m, masks.quotas_of(ref), (3,))
    assert masks.masks_equal(rnd, again)


def test_apply_mask_zeroes_and_keeps_unprunable():
    params = _params()
    m = masks.global_magnitude_mask(params, masks.init_mask(params), 0.5)
    out = masks.apply_mask(params, m)
    assert masks.zero_violations(out, m) == 0
    assert masks.zero_violations(params, m) > 0
    chex.assert_trees_all_equal(out["block"]["bn"], params["block"]["bn"])


def test_no_recompilation_for_new_mask_values():
    params = _params()
    m = masks.init_mask(params)
    f = jax.jit(masks.apply_mask)
    topk = jax.jit(masks.topk_global)
    for density in (0.9, 0.5, 0.1):
        k = int(density * masks.count(m)["total"])
        new = topk(masks.magnitude_scores(params, m), m, k)
        f(params, new)
    assert train.compilation_count(f) == 1
    assert train.compilation_count(topk) == 1


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan")])
def test_check_sparsity_rejects_out_of_range(bad):
    with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
        masks.check_sparsity(bad)


def test_unknown_distribution_lists_valid_names():
    with pytest.raises(ValueError, match="erk.*uniform"):
        masks.layer_densities(masks.init_mask(_params()), 0.5, "bogus")


def test_topk_per_layer_tiebreak_is_lexicographic():
    votes = {"a": {"kernel": jnp.array([[2.0, 2.0, 1.0, 2.0]])}}
    tie = {"a": {"kernel": jnp.array([[0.1, 0.5, 9.0, 0.3]])}}
    quotas = {"a": {"kernel": 2}}
    out = masks.topk_per_layer(votes, quotas, tie)
    np.testing.assert_array_equal(np.asarray(out["a"]["kernel"]), [[False, True, False, True]])


@pytest.mark.parametrize("seed", range(6))
def test_host_topk_equals_the_sorting_one(seed):
    """Concrete inputs are selected on the host (np.partition); traced ones by a stable sort. Both
    must give the same mask, ties (by tiebreak, then position), NaN, ±inf and -0.0 included."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 400))
    pool = np.array([0.0, -0.0, 1.0, -1.0, 2.5, np.inf, -np.inf, np.nan], np.float32)
    scores = np.where(rng.random(n) < 0.5, rng.choice(pool, n), rng.integers(-3, 4, n)).astype(np.float32)
    tie = np.where(rng.random(n) < 0.3, np.nan, rng.integers(-2, 3, n)).astype(np.float32)
    traced = jax.jit(masks._keep_top_traced)
    traced_tie = jax.jit(masks._keep_top_traced)
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n, n + 2, int(rng.integers(0, n + 1))}):
        host = np.asarray(masks._keep_top(jnp.asarray(scores), jnp.asarray(k)))
        np.testing.assert_array_equal(host, np.asarray(traced(jnp.asarray(scores), jnp.asarray(k))), f"k={k}")
        assert host.sum() == min(max(k, 0), n)
        host_t = np.asarray(masks._keep_top(jnp.asarray(scores), jnp.asarray(k), jnp.asarray(tie)))
        np.testing.assert_array_equal(
            host_t, np.asarray(traced_tie(jnp.asarray(scores), jnp.asarray(k), jnp.asarray(tie))), f"k={k} tie")
    # the whole-tree entry points: eager (host) and jitted (sort) agree too
    tree = {"a": {"kernel": jnp.asarray(scores[: n // 2].reshape(-1, 1))},
            "b": {"kernel": jnp.asarray(scores[n // 2:].reshape(1, -1))}}
    m = masks.init_mask(tree)
    k = n // 3
    assert masks.masks_equal(masks.topk_global(tree, m, k), jax.jit(masks.topk_global)(tree, m, k))
    quotas = masks.map_prunable(lambda x: max(1, np.size(x) // 2), m)
    assert masks.masks_equal(masks.topk_per_layer(tree, quotas),
                             jax.jit(masks.topk_per_layer)(tree, quotas))


def test_host_built_trees_are_placed_like_their_inputs():
    """Masks selected on the host and host-filled trees keep the committedness of their input, as
    the eager ops did (a state mixing committed and uncommitted arrays compiles the steps twice)."""
    loose = {"a": {"kernel": jnp.arange(6.0).reshape(2, 3)}}
    pinned = jax.device_put(loose, jax.devices()[0])
    for tree, committed in ((loose, False), (pinned, True)):
        m = masks.init_mask(tree)
        outs = [masks.topk_global(tree, m, 2), masks.topk_per_layer(tree, {"a": {"kernel": 2}}),
                masks.full_like_mask(m, tree, 0, np.int32), m, masks.global_magnitude_mask(tree, m, 0.5)]
        for out in outs:
            leaf = out["a"]["kernel"]
            assert leaf.committed is committed
    np.testing.assert_array_equal(np.asarray(masks.full_like_mask(m, pinned, 7, np.int32)["a"]["kernel"]),
                                  np.full((2, 3), 7, np.int32))


def test_host_arrays_reach_the_device_without_a_compilation():
    """Host-built arrays are placed with ``jax.device_put``: ``jnp.asarray`` of a numpy array
    compiles a ``stage`` op per shape and dtype (the control below shows it does here)."""
    from ballot_jax import conflicts, fairness

    compiled = []

    def listen(event: str, duration: float, **kw) -> None:
        if event.endswith("backend_compile_duration"):
            compiled.append(kw.get("fun_name"))

    shape = (5, 11, 3)  # a shape nothing else in the suite uses
    loose, pinned = np.ones(shape, np.float32), jax.device_put(np.ones(shape, np.float32), jax.devices()[0])
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        placed = [masks.placed_like(np.zeros(shape, np.float32), x) for x in (loose, jax.device_put(loose), pinned)]
        placed.append(masks.full_like_mask({"k": True}, {"k": np.ones(shape[::-1], np.int16)}, 3, np.int16)["k"])
        placed += [conflicts.group_weights([0.25, 0.5, 0.01, 0.75, 1.0, 0.5, 0.3]), fairness.init_counts(7, 3)]
        jax.block_until_ready(placed)
        assert compiled == []
        jnp.asarray(np.zeros((3, 11, 5), np.float32))  # control: the listener sees the `stage` compile
        assert compiled
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    assert [x.committed for x in placed[:3]] == [False, False, True]
    np.testing.assert_array_equal(np.asarray(placed[4]), np.float32(1) / np.maximum(
        np.array([0.25, 0.5, 0.01, 0.75, 1.0, 0.5, 0.3], np.float32), np.float32(0.05)))


def test_apply_mask_on_the_host_is_the_compiled_one_bit_for_bit():
    """Concrete trees are masked on the host (no compilation per tree structure); the result has the
    bits of the compiled select (NaN, inf, -0.0 kept where kept, +0.0 where pruned), the dtype and
    the placement of each param, and unprunable leaves are passed through."""
    vals = np.array([[-0.0, 0.0, np.nan, -np.inf], [1.5, -2.25, 3e-39, -1e30]], np.float32)
    params = {"a": {"kernel": jnp.asarray(vals)}, "b": {"bias": jnp.asarray([1.0, -0.0])},
              "c": {"kernel": jnp.asarray(vals[::-1].astype(jnp.bfloat16))}}
    keep = np.array([[True, False, True, False], [False, True, True, False]])
    mask = {"a": {"kernel": jnp.asarray(keep)}, "b": {"bias": None}, "c": {"kernel": jnp.asarray(~keep)}}
    for tree in (params, jax.device_put(params, jax.devices()[0])):
        host = masks.apply_mask(tree, mask)
        traced = jax.jit(masks.apply_mask)(tree, mask)
        for h, t, p in zip(jax.tree.leaves(host), jax.tree.leaves(traced), jax.tree.leaves(tree)):
            assert h.dtype == t.dtype == p.dtype
            assert np.asarray(h).tobytes() == np.asarray(t).tobytes()
            assert h.committed is p.committed
        assert host["b"]["bias"] is tree["b"]["bias"]
    assert str(np.asarray(host["a"]["kernel"])[0, 1]) == "0.0" and np.isnan(np.asarray(host["a"]["kernel"])[0, 2])


def test_magnitude_mask_on_the_host_is_the_compiled_one():
    """Concrete params take |w| on the host (nothing compiled) instead of the jitted scores. Same
    mask (and the same as the traced sort), with ties, -0.0, weights already pruned and a second
    round that must keep them pruned."""
    rng = np.random.default_rng(0)
    params = {"a": {"kernel": jnp.asarray(rng.integers(-3, 4, (6, 7)).astype(np.float32))},
              "b": {"kernel": jnp.asarray(np.array([[-0.0, 0.0, 1.0], [-1.0, 2.0, -2.0]], np.float32))},
              "c": {"bias": jnp.ones((3,))}}
    first = masks.global_magnitude_mask(params, masks.init_mask(params), 0.6)
    for mask, density in ((masks.init_mask(params), 0.6), (first, 0.3)):
        host = masks.global_magnitude_mask(params, mask, density)
        k = int(round(density * masks.count(mask)["total"]))
        compiled = masks.topk_global(masks.magnitude_scores(params, mask), mask, k)
        traced = jax.jit(lambda p, m: masks.topk_global(masks.magnitude_scores(p, m), m, k))(params, mask)
        assert masks.masks_equal(host, compiled) and masks.masks_equal(host, traced)
        assert masks.count(host)["kept"] == int(round(density * masks.count(mask)["total"]))
        assert not np.any(np.asarray(host["a"]["kernel"]) & ~np.asarray(mask["a"]["kernel"]))


def test_init_mask_works_under_a_trace():
    """Under ``jit`` (a model initialised inside a step) the all-kept mask is a constant, not placed."""
    params = {"a": {"kernel": jnp.ones((2, 3))}, "b": {"bias": jnp.ones((3,))}}
    m = jax.jit(lambda p: masks.init_mask(p))(params)
    assert m["b"]["bias"] is None and bool(np.all(np.asarray(m["a"]["kernel"])))
