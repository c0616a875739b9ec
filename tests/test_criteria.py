"""Selection criteria on constructed cases with known answers, the binary-head fix, variants."""

from __future__ import annotations

import math

import chex
import jax.numpy as jnp
import numpy as np
import pytest

from ballot_jax import config as config_lib
from ballot_jax import conflicts, masks, methods
from ballot_jax.methods import ballot


def _round(weights, a, f, quota, *, a_sq=None, f_sq=None, per_group=None, reference=None):
    """RoundInputs for one prunable layer named ``layer``."""
    tree = lambda x: None if x is None else {"layer": {"kernel": jnp.asarray(x, jnp.float32)}}  # noqa: E731
    w = np.asarray(weights, np.float32)
    return conflicts.RoundInputs(
        weights=tree(w), reference=tree(w if reference is None else reference), a=tree(a), f=tree(f),
        mask={"layer": {"kernel": jnp.ones(w.shape, bool)}}, quotas={"layer": {"kernel": quota}},
        a_sq=tree(a_sq), f_sq=tree(f_sq), per_group=tree(per_group))


def _kept(name, r, **options):
    s = conflicts.get_criterion(name).score(r, **options)
    return np.asarray(masks.topk_per_layer(s, r.quotas)["layer"]["kernel"])


def test_registry_lists_every_criterion_and_rejects_unknown_names():
    assert set(conflicts.CRITERIA) == {"gradient", "taylor", "magnitude_veto", "group_balanced", "prototype"}
    with pytest.raises(ValueError, match="valid criteria: gradient, taylor"):
        conflicts.get_criterion("nosuch")


def test_taylor_keeps_the_weight_that_helps_both_and_drops_the_one_in_conflict():
    # Removing any weight raises the accuracy loss (−θ·a > 0). Weight 0 also raises the fairness
    # loss (agreement); weight 1 would lower it (conflict) with the same importance; weight 2 agrees
    # but matters little for fairness. Quota 2: the conflicting weight loses.
    w, a, f = [[1.0, 1.0, 1.0]], [[-1.0, -1.0, -1.0]], [[-1.0, 1.0, -0.2]]
    r = _round(w, a, f, 2, a_sq=np.square(a), f_sq=np.square(f))
    np.testing.assert_array_equal(_kept("taylor", r), [[True, False, True]])
    # Without the conflict (weight 1's fairness gradient agrees) it is kept over weight 2.
    r2 = _round(w, a, [[-1.0, -1.0, -0.2]], 2, a_sq=np.square(a), f_sq=np.square([[-1.0, -1.0, -0.2]]))
    np.testing.assert_array_equal(_kept("taylor", r2), [[True, True, False]])


def test_taylor_weighs_gradients_by_the_weights():
    # Same gradients everywhere: the importance θ²·g² follows |θ|, so the largest weights win.
    w = [[0.1, 3.0, -2.0, 0.5]]
    g = [[-1.0, -1.0, 1.0, -1.0]]  # −θ·g > 0 for every weight: no conflict
    r = _round(w, g, g, 2)
    np.testing.assert_array_equal(_kept("taylor", r), [[False, True, True, False]])


def test_magnitude_veto_respects_the_band():
    # Magnitudes 10..1 (rank 0..9), quota 5, band 0.2 → w = 1: ranks 0–3 always kept, 6–9 never,
    # ranks 4 and 5 compete for one place. Rank 4 conflicts (a, f opposite signs), rank 5 agrees.
    mags = np.arange(10, 0, -1, dtype=np.float32)[None]
    a = np.ones_like(mags)
    f = np.ones_like(mags)
    f[0, 4] = -1.0  # conflict at rank 4
    f[0, 0] = -1.0  # a conflict above the band changes nothing
    f[0, 8] = 1.0
    r = _round(mags, a, f, 5)
    kept = _kept("magnitude_veto", r, band=0.2)
    np.testing.assert_array_equal(kept, [[True, True, True, True, False, True, False, False, False, False]])
    # With no conflict in the band, it is the plain magnitude ticket.
    kept = _kept("magnitude_veto", _round(mags, a, np.abs(f), 5), band=0.2)
    np.testing.assert_array_equal(kept, mags >= 6)
    # band = 0: exactly the magnitude ticket whatever the conflicts.
    np.testing.assert_array_equal(_kept("magnitude_veto", r, band=0.0), mags >= 6)


def test_group_balanced_keeps_every_groups_share():
    # Group 0's importance sits on weights 0 and 1 (large), group 1's on weight 3 (small in absolute
    # terms). Top-2 of the summed importance would keep {0, 1} and leave group 1 nothing; the
    # balanced fill gives each group its most important weight.
    per_group = np.array([[[10.0, 9.0, 0.0, 0.0]], [[0.0, 0.0, 0.1, 1.0]]], np.float32)  # [G, 1, 4]
    r = _round(np.ones((1, 4)), per_group.sum(0), per_group.sum(0), 2, per_group=per_group)
    np.testing.assert_array_equal(_kept("group_balanced", r), [[True, False, False, True]])
    total = np.square(per_group.sum(0))
    assert set(np.argsort(-total[0])[:2]) == {0, 1}  # the unbalanced choice, for contrast


def test_group_balanced_fills_exactly_the_quota():
    rng = np.random.default_rng(0)
    per_group = rng.normal(size=(3, 6, 5)).astype(np.float32)
    r = _round(rng.normal(size=(6, 5)), per_group.sum(0), per_group.sum(0), 7, per_group=per_group)
    assert _kept("group_balanced", r, chunks=4).sum() == 7


def test_binary_head_scores_are_distinct():
    # A two-class head: the two columns' gradients are exact negatives. Per-row normalisation
    # makes every |â + η f̂| 0 or √2; per-layer normalisation keeps the rows' magnitudes.
    rows = np.array([[1.0], [2.0], [0.5], [3.0]], np.float32)
    a = np.concatenate([rows, -rows], axis=1)
    frows = np.array([[0.2], [1.0], [3.0], [0.7]], np.float32)
    f = np.concatenate([frows, -frows], axis=1)
    per_row = conflicts.normalize_output_axis(jnp.asarray(a)) + conflicts.normalize_output_axis(jnp.asarray(f))
    assert len(np.unique(np.round(np.abs(np.asarray(per_row)), 6))) <= 2
    s = np.asarray(conflicts.gradient_scores(_round(np.ones((4, 2)), a, f, 4))["layer"]["kernel"])
    assert len(np.unique(np.round(s[:, 0], 6))) == 4
    # Wider layers keep the paper's per-row normalisation.
    g = np.arange(1.0, 7.0, dtype=np.float32).reshape(2, 3)
    chex.assert_trees_all_close(conflicts.normalize_kernel(jnp.asarray(g)), conflicts.normalize_output_axis(jnp.asarray(g)))


def test_gradient_criterion_is_the_paper_score():
    rng = np.random.default_rng(1)
    a, f = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    got = conflicts.gradient_scores(_round(np.ones((5, 4)), a, f, 3), eta=0.5)["layer"]["kernel"]
    want = np.abs(a / np.linalg.norm(a, axis=-1, keepdims=True) + 0.5 * f / np.linalg.norm(f, axis=-1, keepdims=True))
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)


def test_prototype_votes_on_the_head_only():
    ticket = {"conv": {"kernel": jnp.asarray(np.arange(20).reshape(4, 5) < 4)},
              "head": {"kernel": jnp.asarray(np.arange(10).reshape(5, 2) < 2)}}

    class Ctx:  # target density 0.2
        config = config_lib.make(sparsity=0.8)

    q = ballot.vote_quotas(Ctx, ticket, head_only=True)
    assert q == {"conv": {"kernel": 20}, "head": {"kernel": 2}}
    assert ballot.vote_quotas(Ctx, ticket, head_only=False) == {"conv": {"kernel": 4}, "head": {"kernel": 2}}


def test_method_variants_parse_and_reject_bad_parts():
    m = methods.get("ballot:taylor:dense:trained")
    assert m.name == "ballot:taylor:dense:trained" and m.from_dense
    assert "criterion=taylor" in m.description and "vote_trajectory=dense" in m.description
    assert methods.parse("ballot,ballot:magnitude_veto,lth") == ["ballot", "ballot:magnitude_veto", "lth"]
    assert methods.directory_name("ballot:taylor:dense") == "ballot-taylor-dense"
    with pytest.raises(ValueError, match="unknown Ballot variant 'nosuch'"):
        methods.get("ballot:nosuch")
    with pytest.raises(ValueError, match="sets criterion twice"):
        methods.get("ballot:taylor:gradient")
    with pytest.raises(ValueError, match="has no variants"):
        methods.get("lth:taylor")


def test_overlap_is_a_share_of_the_ticket_not_a_jaccard_index():
    ticket = {"l": {"kernel": jnp.asarray([True, True, True, True, False, False, False, False])}}
    other = {"l": {"kernel": jnp.asarray([True, False, False, False, True, True, True, False])}}
    o = masks.overlap(other, ticket)
    assert o["share_of_b"] == 0.25 and math.isclose(o["jaccard"], 1 / 7)
