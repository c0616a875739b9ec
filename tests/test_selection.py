"""select_subnetwork(): the docstring example runs, returns an exact-sparsity mask, is deterministic."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ballot_jax
from ballot_jax import masks, selection
from ballot_jax.methods import common
from helpers import TinyNet


def _split(rng, n):
    y = rng.integers(0, 3, n)
    return {"image": rng.random((n, 8, 8, 3), np.float32) + y[:, None, None, None], "label": y,
            "group": (np.arange(n) % 2)}


def test_select_subnetwork_mask_and_details():
    model = TinyNet()
    theta0 = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    rng = np.random.default_rng(0)
    tr, va = _split(rng, 128), _split(rng, 32)
    out = ballot_jax.select_subnetwork(model.apply, theta0, tr, va, sparsity=0.7, dense_epochs=1, vote_epochs=2,
                                       batch_size=32, return_details=True)
    assert isinstance(out, selection.SubnetworkResult)
    c = masks.count(out.mask)
    assert c["kept"] == round(0.3 * c["total"])
    assert len(out.diagnostics) == 2 and "conflicts" in out.diagnostics[0]
    # votes never exceed the number of rounds
    assert max(int(v.max()) for v in masks.prunable_leaves(out.votes, out.mask)) <= 2
    again = ballot_jax.select_subnetwork(model.apply, theta0, tr, va, sparsity=0.7, dense_epochs=1, vote_epochs=2,
                                         batch_size=32)
    assert masks.masks_equal(out.mask, again)


def test_select_subnetwork_with_trained_variables_skips_dense(monkeypatch):
    """Given θ_T, no dense training runs and the votes start from θ_T (its magnitude ticket)."""
    model = TinyNet()
    theta0 = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    trained = model.init(jax.random.PRNGKey(7), jnp.zeros((1, 8, 8, 3)))  # a stand-in θ_T ≠ θ0

    def no_dense(*_args, **_kwargs):
        raise AssertionError("select_subnetwork trained the dense model although trained_variables was given")

    monkeypatch.setattr(common, "dense_stage", no_dense)
    rng = np.random.default_rng(1)
    out = ballot_jax.select_subnetwork(model.apply, theta0, _split(rng, 64), _split(rng, 32), sparsity=0.5,
                                       trained_variables=trained, vote_epochs=1, batch_size=32, return_details=True)
    assert abs(masks.sparsity(out.mask) - 0.5) < 0.01
    for a, b in zip(jax.tree.leaves(out.trained_params), jax.tree.leaves(trained["params"])):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_bad_inputs_are_named():
    model = TinyNet()
    theta0 = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="outside"):
        ballot_jax.select_subnetwork(model.apply, theta0, _split(rng, 64), _split(rng, 32), sparsity=1.0)
    with pytest.raises(ValueError, match="'image'"):
        ballot_jax.select_subnetwork(model.apply, theta0, [1, 2], _split(rng, 32), sparsity=0.5)
    with pytest.raises(ValueError, match="unknown option 'vote_sorce'"):
        ballot_jax.select_subnetwork(model.apply, theta0, _split(rng, 64), _split(rng, 32), sparsity=0.5,
                                     vote_sorce="pass")


def test_docstring_example_runs():
    example = selection.__doc__.split("Example (runs on a CPU in a few seconds)::")[1].split("The lower-level")[0]
    code = "\n".join(line[4:] for line in example.splitlines())
    namespace: dict = {}
    exec(compile(code, "select_subnetwork_example", "exec"), namespace)  # noqa: S102 - our own docstring
    assert masks.sparsity(namespace["mask"]) == pytest.approx(0.8, abs=0.01)


@pytest.mark.parametrize("criterion,trajectory", [("gradient", "ticket"), ("taylor", "dense"),
                                                  ("magnitude_veto", "ticket"), ("group_balanced", "dense"),
                                                  ("prototype", "ticket")])
def test_every_criterion_selects_a_mask_at_its_sparsity(criterion, trajectory):
    model = TinyNet()
    theta0 = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    rng = np.random.default_rng(2)
    out = ballot_jax.select_subnetwork(model.apply, theta0, _split(rng, 96), _split(rng, 32), sparsity=0.6,
                                       criterion=criterion, vote_trajectory=trajectory, dense_epochs=1,
                                       vote_epochs=2, batch_size=32, return_details=True)
    c = masks.count(out.mask)
    if criterion == "prototype":  # the classifier alone is pruned, the rest stays dense
        head = [n for n in c["layers"] if n.startswith("head")]
        assert c["layers"][head[0]][0] == round(0.4 * c["layers"][head[0]][1])
        assert all(k == t for n, (k, t) in c["layers"].items() if n not in head)
    else:
        assert c["kept"] == round(0.4 * c["total"])
    assert 0.0 <= out.ticket_share_kept <= 1.0 and out.diagnostics[-1]["vote_rounds"] == 1


def test_bad_criterion_fails_before_training():
    model = TinyNet()
    theta0 = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    rng = np.random.default_rng(1)
    with pytest.raises(ValueError, match="unknown criterion 'nosuch'"):
        ballot_jax.select_subnetwork(model.apply, theta0, _split(rng, 64), _split(rng, 32), sparsity=0.5,
                                     criterion="nosuch")
    with pytest.raises(ValueError, match="needs the per-group gradient sums"):
        ballot_jax.select_subnetwork(model.apply, theta0, _split(rng, 64), _split(rng, 32), sparsity=0.5,
                                     criterion="group_balanced", vote_source="train_steps")
