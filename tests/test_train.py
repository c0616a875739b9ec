"""Tests of ballot_jax.train: masked updates keep pruned weights at exactly 0, one compilation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ballot_jax import masks, train
from helpers import random_batch


def _setup(tiny_model, sparsity=0.5, **opt):
    model, variables = tiny_model
    cfg = train.OptimizerConfig(**opt)
    tx = train.make_optimizer(cfg)
    m = masks.global_magnitude_mask(variables["params"], masks.init_mask(variables["params"]), 1 - sparsity)
    state = train.create_train_state(variables["params"], variables["batch_stats"], tx, m)
    return model, tx, cfg, state


@pytest.mark.parametrize("opt", [dict(optimizer="sgd", momentum=0.9, weight_decay=5e-2), dict(optimizer="adam", learning_rate=1e-2)])
def test_masked_weights_stay_exactly_zero_and_others_move(tiny_model, opt):
    model, tx, cfg, state = _setup(tiny_model, **opt)
    # Momentum carried over from a denser mask: the masked update must still keep zeros.
    step = train.make_train_step(model.apply, tx)
    before = jax.tree.map(np.asarray, state.params)
    lrs = train.learning_rates(train.make_schedule(cfg, 50), 50)
    for i in range(50):
        state, _ = step(state, random_batch(i), lrs[i])
    assert masks.zero_violations(state.params, state.mask) == 0
    for p0, p1, m in zip(masks.prunable_leaves(before, state.mask), masks.prunable_leaves(state.params, state.mask),
                         masks.prunable_leaves(state.mask, state.mask)):
        m = np.asarray(m)
        p1 = np.asarray(p1)
        assert np.all(p1[~m] == 0.0)
        # every kept weight moved (none is frozen)
        assert np.all(p1[m] != p0[m])
    assert int(state.step) == 50


def test_stale_momentum_from_denser_mask_is_masked(tiny_model):
    model, tx, cfg, state = _setup(tiny_model, sparsity=0.0)
    step = train.make_train_step(model.apply, tx)
    for i in range(5):
        state, _ = step(state, random_batch(i), 0.1)
    # prune now, keeping the optimizer state (momentum is non-zero for the newly pruned weights)
    new_mask = masks.global_magnitude_mask(state.params, state.mask, 0.3)
    state = state.replace(mask=new_mask, params=masks.apply_mask(state.params, new_mask))
    for i in range(10):
        state, _ = step(state, random_batch(100 + i), 0.1)
    assert masks.zero_violations(state.params, state.mask) == 0


def test_one_compilation_across_masks_and_learning_rates(tiny_model):
    model, tx, cfg, state = _setup(tiny_model)
    step = train.make_train_step(model.apply, tx)
    params = state.params
    for i, density in enumerate([0.9, 0.5, 0.2]):
        m = masks.global_magnitude_mask(params, state.mask, density)
        state = train.create_train_state(params, state.batch_stats, tx, m)
        for j in range(3):
            state, _ = step(state, random_batch(j), 0.1 / (j + 1))
        params = jax.tree.map(jnp.copy, state.params)
    assert train.compilation_count(step) == 1


def test_loss_decreases_on_fixed_batch(tiny_model):
    model, tx, cfg, state = _setup(tiny_model, sparsity=0.0, schedule="constant", weight_decay=0.0)
    step = train.make_train_step(model.apply, tx)
    batch = random_batch(0)
    losses = []
    for _ in range(60):
        state, metrics = step(state, batch, 0.1)
        losses.append(train.summarize(metrics)["loss"])
    assert losses[-1] < 0.5 * losses[0]


def test_step_schedule_matches_paper_recipe():
    cfg = train.OptimizerConfig()
    lrs = train.learning_rates(train.make_schedule(cfg, 100), 100)
    np.testing.assert_allclose(lrs[[0, 39, 40, 59, 60, 79, 80, 99]], [0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3, 1e-4, 1e-4], rtol=1e-5)


@pytest.mark.parametrize("schedule", train.SCHEDULES)
def test_every_schedule_has_its_shape(schedule):
    """Each schedule over a 40-step stage: where it decays, where its warm-up ends, where it ends."""
    cfg = train.OptimizerConfig(schedule=schedule, warmup_fraction=0.1, decay_boundaries=(0.5, 0.75))
    lrs = train.learning_rates(train.make_schedule(cfg, 40), 40)
    assert lrs.shape == (40,) and np.all(np.isfinite(lrs)) and lrs.max() <= 0.1 + 1e-6
    if schedule == "step":  # ×0.1 at steps 20 and 30, constant in between
        np.testing.assert_allclose(lrs[[0, 19, 20, 29, 30, 39]], [0.1, 0.1, 0.01, 0.01, 1e-3, 1e-3], rtol=1e-5)
        assert np.count_nonzero(np.diff(lrs)) == 2
    elif schedule == "constant":
        np.testing.assert_allclose(lrs, 0.1)
    elif schedule == "cosine":  # from the peak, strictly down, to ≈ 0 at the stage's end
        assert lrs[0] == pytest.approx(0.1) and np.all(np.diff(lrs) < 0) and lrs[-1] < 0.1 * 0.01
        assert lrs[20] == pytest.approx(0.05, rel=1e-5)  # half-way: half the peak
    else:  # warm-up: linear from 0 to the peak over the first 10% (4 steps)
        np.testing.assert_allclose(lrs[:5], [0.0, 0.025, 0.05, 0.075, 0.1], rtol=1e-5, atol=1e-7)
        if schedule == "warmup_constant":
            np.testing.assert_allclose(lrs[4:], 0.1)
        else:  # warmup_cosine: then down to ≈ 0
            assert np.all(np.diff(lrs[4:]) < 0) and lrs[-1] < 0.1 * 0.01


def test_unknown_optimizer_and_schedule_errors():
    with pytest.raises(ValueError, match="valid"):
        train.make_optimizer(train.OptimizerConfig(optimizer="lion"))
    with pytest.raises(ValueError, match="valid"):
        train.make_schedule(train.OptimizerConfig(schedule="wiggle"), 10)


def test_eval_counts_ignore_padding(tiny_model):
    model, tx, cfg, state = _setup(tiny_model)
    ev = train.make_eval_step(model.apply)
    b = random_batch(1)
    padded = dict(b, weight=b["weight"].at[8:].set(0.0))
    c_full = train.evaluate_counts(ev, state, [b], num_groups=2, num_classes=3)
    c_pad = train.evaluate_counts(ev, state, [padded], num_groups=2, num_classes=3)
    assert int(c_full.sum()) == 16 and int(c_pad.sum()) == 8


def test_nonfinite_loss_is_flagged(tiny_model):
    model, tx, cfg, state = _setup(tiny_model)
    step = train.make_train_step(model.apply, tx)
    b = random_batch(0)
    b = dict(b, image=b["image"].at[0, 0, 0, 0].set(jnp.nan))
    _, metrics = step(state, b, 0.1)
    assert train.summarize(metrics)["nonfinite_steps"] == 1


def test_step_schedule_keeps_every_decay_on_short_stages():
    # 2 steps: 40% and 60% both round to step 1 (0.8 → 1, 1.2 → 1): both decays must still apply.
    cfg = train.OptimizerConfig()
    lrs = train.learning_rates(train.make_schedule(cfg, 2), 2)
    np.testing.assert_allclose(lrs, [0.1, 1e-3], rtol=1e-5)  # 0.8 → step 2 lies beyond the stage
    lrs = train.learning_rates(train.make_schedule(cfg, 5), 5)
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.01, 1e-3, 1e-4], rtol=1e-5)


def test_host_schedules_are_optax_bit_for_bit_without_a_compilation():
    """``step`` and ``constant`` are evaluated by NumPy: every value must be optax's float32 value
    (evaluated by JAX), and nothing may compile."""
    compiled = []

    def listen(event, duration, **kw):
        if event.endswith("backend_compile_duration"):
            compiled.append(kw.get("fun_name"))

    cases = [dict(schedule="constant", learning_rate=lr) for lr in (0.1, 0.05, 3e-4, 1.0 / 3)]
    for lr in (0.1, 0.05, 0.37, 1e-3, 1.0 / 3, 2.5):
        for factor in (0.1, 0.2, 0.5, 1.0 / 3, 0.0):
            for bounds in ((0.4, 0.6, 0.8), (0.5,), (0.3, 0.3, 0.9), (0.0, 1.0), ()):
                cases.append(dict(schedule="step", learning_rate=lr, decay_factor=factor, decay_boundaries=bounds))
    for case in cases:
        cfg = train.OptimizerConfig(**case)
        for n in (1, 2, 5, 17, 100, 391):
            schedule = train.make_schedule(cfg, n)
            jax.monitoring.register_event_duration_secs_listener(listen)
            try:
                got = train.learning_rates(schedule, n)
            finally:
                jax.monitoring.unregister_event_duration_listener(listen)
            want = np.broadcast_to(np.asarray(schedule(jnp.arange(n)), np.float32), (n,))
            assert got.dtype == np.float32 and got.shape == (n,)
            np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=str((case, n)))
    assert compiled == []


@pytest.mark.parametrize("opt", [dict(optimizer="sgd", momentum=0.9), dict(optimizer="adamw", learning_rate=1e-2)])
def test_a_state_built_on_the_host_is_the_compiled_one_bit_for_bit(tiny_model, opt):
    """Concrete trees are copied and masked on the host, only ``tx.init`` compiled: every leaf of
    the state has the compiled builder's bits, dtype and placement (committed or not), and the
    caller's trees survive a donating train step on the new state."""
    model, variables = tiny_model
    tx = train.make_optimizer(train.OptimizerConfig(**opt))
    params = jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(-0.0), variables["params"])
    for placed in (False, True):
        p, bs = (jax.device_put((params, variables["batch_stats"]), jax.devices()[0]) if placed
                 else (params, variables["batch_stats"]))
        m = masks.global_magnitude_mask(p, masks.init_mask(p), 0.5)
        host = train.create_train_state(p, bs, tx, m)
        compiled = train._create_train_state(p, bs, tx, m)
        assert jax.tree.structure(host) == jax.tree.structure(compiled)
        for h, c in zip(jax.tree.leaves(host), jax.tree.leaves(compiled)):
            assert h.dtype == c.dtype and h.shape == c.shape
            assert np.asarray(h).tobytes() == np.asarray(c).tobytes()
            assert h.committed is c.committed
        kept = jax.tree.map(np.array, (p, bs, m))
        step = train.make_train_step(model.apply, tx)
        new, _ = step(host, random_batch(0), jnp.float32(0.1))
        jax.block_until_ready(new)
        for before, now in zip(jax.tree.leaves(kept), jax.tree.leaves((p, bs, m))):
            np.testing.assert_array_equal(before, np.asarray(now))  # not donated away


def test_the_train_step_equals_one_that_masks_its_forward_pass_bit_for_bit(tiny_model):
    """The step reads params as they are (a state's params are zero where masked); masking them
    again in the forward pass, as the step did before, gives the same bits over several steps."""
    model, tx, cfg, state = _setup(tiny_model, sparsity=0.6, optimizer="sgd", momentum=0.9, weight_decay=5e-2)

    @jax.jit
    def masked_forward_step(state, batch, lr):
        def loss_fn(params):
            logits, new_stats = train.forward(model.apply, params, state.batch_stats, state.mask, batch["image"], True)
            return jnp.mean(train.example_losses(logits, batch["label"])), new_stats

        grads, new_stats = jax.grad(loss_fn, has_aux=True)(state.params)
        params, opt_state = train.masked_update(tx, state, grads, lr)
        return state.replace(step=state.step + 1, params=params, batch_stats=new_stats, opt_state=opt_state)

    step = train.make_train_step(model.apply, tx, donate=False)
    ours, ref = state, state
    for i in range(4):
        ours, _ = step(ours, random_batch(i), jnp.float32(0.1))
        ref = masked_forward_step(ref, random_batch(i), jnp.float32(0.1))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    assert masks.zero_violations(ours.params, ours.mask) == 0
