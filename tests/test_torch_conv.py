"""The "torch" convolution lowering (PyTorch's CPU kernels through buffer callbacks).

Skipped where PyTorch is not installed (it is an optional dependency); the refusal tests run
everywhere.
"""

from __future__ import annotations

import importlib.util

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ballot_jax import models
from ballot_jax.models import conv as conv_lib
from ballot_jax.models import torch_conv, torch_ffi

# find_spec, not an import: collecting this file must not load PyTorch into the whole test session.
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed")

CASES = [
    # (input shape, features, kernel, strides, padding): symmetric, asymmetric ("SAME" with stride 2
    # on an even side pads (0, 1)), explicit per-side, 1x1 strided, 7x7 stem-like, non-square.
    ((2, 9, 9, 3), 4, (3, 3), 1, "SAME"),
    ((2, 8, 8, 3), 5, (3, 3), 2, "SAME"),
    ((2, 8, 8, 4), 6, (3, 3), 2, 1),
    ((2, 8, 6, 4), 3, (1, 1), 2, 0),
    ((2, 12, 12, 3), 8, (7, 7), 2, 3),
    ((2, 6, 7, 3), 4, (3, 1), (2, 1), ((1, 0), (0, 2))),
    ((2, 7, 5, 3), 4, (2, 2), 1, "VALID"),
]


def _randn(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@needs_torch
@pytest.mark.parametrize("shape,features,kernel_size,strides,padding", CASES)
@pytest.mark.parametrize("plan", ["torch", "torch/xla/offsets", "xla/torch/torch"])
def test_torch_products_match_xla(shape, features, kernel_size, strides, padding, plan) -> None:
    ks, st = conv_lib._pair(kernel_size, "k"), conv_lib._pair(strides, "s")
    pads = conv_lib.normalize_padding(padding, shape[1:3], ks, st)
    x, k = _randn(shape, 1), _randn(ks + (shape[-1], features), 2)

    @jax.jit
    def run(x, k):
        out = {}
        for impl in ("xla", plan):
            y, vjp = jax.vjp(lambda x, k, impl=impl: conv_lib.apply_plan(x, k, st, pads, None, impl), x, k)
            cot = jnp.cos(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape)
            out[impl] = (y, vjp(cot))
        return out

    out = run(x, k)
    chex.assert_trees_all_close(out[plan], out["xla"], rtol=1e-5, atol=1e-4)


@pytest.fixture(params=["ffi", "callback"])
def path(request, monkeypatch) -> str:
    """Run a test through the compiled FFI targets and again through Python callbacks."""
    if request.param == "callback":
        monkeypatch.setattr(torch_conv, "use_ffi", lambda: False)
    elif not torch_conv.use_ffi():
        pytest.skip("the FFI handlers cannot be built here (see the logged warning)")
    return request.param


def _product_counts(fn, args, monkeypatch) -> tuple[dict[str, int], object]:
    """(How many of each PyTorch product one call of the jitted, not yet traced ``fn`` computes, its
    output): custom calls left in the optimised HLO (FFI path; XLA removes unused ones) or callbacks
    as they run (callback path)."""
    if torch_conv.use_ffi():
        compiled = fn.lower(*args).compile()
        text = compiled.as_text()
        return {p: text.count(f'custom_call_target="{t}"') for p, (t, _) in torch_ffi.TARGETS.items()}, compiled(*args)
    counts = dict.fromkeys(torch_ffi.TARGETS, 0)
    for product in counts:
        name = f"_{product}_callback"
        original = getattr(torch_conv, name)

        def counted(*a, _original=original, _product=product, **kw):
            counts[_product] += 1
            return _original(*a, **kw)

        monkeypatch.setattr(torch_conv, name, counted)
    out = jax.block_until_ready(fn(*args))
    return counts, out


@needs_torch
def test_unused_input_gradient_is_not_computed(path, monkeypatch) -> None:
    x, k = _randn((2, 8, 8, 3)), _randn((3, 3, 3, 4), 1)
    pads = ((1, 1), (1, 1))

    def loss(k, x):
        return jnp.sum(conv_lib.apply_plan(x, k, (1, 1), pads, None, "torch") ** 2)

    # only the kernel's gradient is asked for: the input-gradient product is cut
    assert _product_counts(jax.jit(jax.grad(loss)), (k, x), monkeypatch)[0] == \
        {"forward": 1, "input_grad": 0, "kernel_grad": 1}
    assert _product_counts(jax.jit(jax.grad(loss, argnums=(0, 1))), (k, x), monkeypatch)[0] == \
        {"forward": 1, "input_grad": 1, "kernel_grad": 1}


@needs_torch
def test_model_auto_torch_matches_xla(path, monkeypatch) -> None:
    # 16x16 input: cnn_small's stem (16x16 output) and conv1 (8x8) go to torch under "auto_torch",
    # conv2 (4x4 output) keeps auto's XLA lowering — both kinds in one train step.
    x, labels = _randn((2, 16, 16, 3)), jnp.array([0, 1])
    built = {impl: models.create("cnn_small", num_classes=3, conv_impl=impl) for impl in ("xla", "auto_torch")}
    variables = built["xla"].init(jax.random.PRNGKey(0), x, train=False)

    @jax.jit
    def run(variables, x):
        out = {}
        for impl, model in built.items():
            def loss(params, model=model):
                logits, _ = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
                return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

            out[impl] = jax.value_and_grad(loss)(variables["params"])
        return out

    counts, out = _product_counts(run, (variables, x), monkeypatch)
    chex.assert_trees_all_close(out["auto_torch"], out["xla"], rtol=1e-4, atol=1e-5)
    # exactly the two large-output convolutions ran in PyTorch (the stem's input gradient is not needed)
    assert counts == {"forward": 2, "input_grad": 1, "kernel_grad": 2}


@needs_torch
def test_ffi_targets_and_callbacks_give_the_same_bits(monkeypatch) -> None:
    """The C++ handlers call the same ATen functions as the Python callbacks: identical values."""
    if not torch_conv.use_ffi():
        pytest.skip("the FFI handlers cannot be built here (see the logged warning)")

    def products(x, k, st, pads):
        y, vjp = jax.vjp(lambda x, k: conv_lib.apply_plan(x, k, st, pads, None, "torch"), x, k)
        return y, vjp(jnp.cos(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape))

    for shape, features, kernel_size, strides, padding in CASES:
        ks, st = conv_lib._pair(kernel_size, "k"), conv_lib._pair(strides, "s")
        pads = conv_lib.normalize_padding(padding, shape[1:3], ks, st)
        x, k = _randn(shape, 1), _randn(ks + (shape[-1], features), 2)
        ffi = jax.jit(products, static_argnums=(2, 3))(x, k, st, pads)
        with monkeypatch.context() as m:
            m.setattr(torch_conv, "use_ffi", lambda: False)
            callback = jax.jit(products, static_argnums=(2, 3))(x, k, st, pads)
        chex.assert_trees_all_equal(ffi, callback)


def test_ffi_build_failure_falls_back_with_one_line_naming_the_fix(monkeypatch, tmp_path, caplog) -> None:
    monkeypatch.setenv(torch_ffi.ENV_SWITCH, "0")
    assert torch_ffi.try_register() is False  # switched off: no build, no warning
    if importlib.util.find_spec("torch") is None:
        return
    monkeypatch.setenv(torch_ffi.ENV_SWITCH, "1")
    monkeypatch.setenv(torch_ffi.ENV_BUILD_DIR, str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    with caplog.at_level("WARNING"):
        assert torch_ffi.try_register() is False
    (record,) = [r for r in caplog.records if r.name == torch_ffi.__name__]
    assert "no C++ compiler found" in record.getMessage() and "Fix: install a C++17 compiler" in record.getMessage()
    assert list(tmp_path.iterdir()) == []  # nothing half-built left behind


@needs_torch
def test_bfloat16_compute() -> None:
    x = _randn((2, 16, 16, 3)).astype(jnp.bfloat16)
    k = _randn((3, 3, 3, 4), 1).astype(jnp.bfloat16)
    pads = ((1, 1), (1, 1))
    y = jax.jit(lambda x, k: conv_lib.apply_plan(x, k, (1, 1), pads, None, "torch"))(x, k)
    ref = conv_lib.conv_xla(x.astype(jnp.float32), k.astype(jnp.float32), (1, 1), pads)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(ref), rtol=0.05, atol=0.1)


def test_choose_rule_with_torch() -> None:
    choose = conv_lib.choose_conv_impl
    big = conv_lib.TORCH_MIN_OUTPUT_SIDE
    assert choose((2 * big, 2 * big), (7, 7), (2, 2), 3, 64, platform="cpu", torch=True) == "torch"
    assert choose((big, big), (3, 3), (1, 1), 64, 64, platform="cpu", torch=True) == "torch"
    # below the threshold (and without torch) the XLA rule decides
    assert choose((big, big), (3, 3), (2, 2), 64, 128, platform="cpu", torch=True) == \
        choose((big, big), (3, 3), (2, 2), 64, 128, platform="cpu")
    assert choose((2, 2), (3, 3), (1, 1), 512, 512, platform="cpu", torch=True) == "patches"
    # a small map with enough output rows (batch x positions) goes to PyTorch as well
    rows = conv_lib.TORCH_MIN_OUTPUT_ROWS
    assert choose((4, 4), (3, 3), (1, 1), 256, 256, platform="cpu", torch=True, batch=rows // 16) == "torch"
    assert choose((4, 4), (3, 3), (1, 1), 256, 256, platform="cpu", torch=True, batch=rows // 16 - 1) == "patches"
    assert choose((4, 4), (3, 3), (1, 1), 256, 256, platform="cpu", batch=rows) == "patches"  # not without torch
    assert choose((64, 64), (3, 3), (1, 1), 64, 64, platform="gpu", torch=True) == "xla"


def test_refusals_name_the_fix(monkeypatch) -> None:
    monkeypatch.setattr(torch_conv, "_torch", lambda: None)
    for impl in ("torch", "auto_torch", "xla/torch/offsets"):
        with pytest.raises(ValueError, match="pip install torch"):
            models.create("cnn_small", num_classes=3, conv_impl=impl)
    monkeypatch.undo()
    if importlib.util.find_spec("torch") is not None:
        with pytest.raises(ValueError, match="CPU only"):
            torch_conv.require(platform="gpu")
    with pytest.raises(ValueError, match="forward/input_grad/kernel_grad"):
        conv_lib.parse_plan("torch/offsets/xla")


@needs_torch
def test_runner_uses_auto_when_the_run_is_split_over_devices(caplog) -> None:
    from types import SimpleNamespace

    from ballot_jax import config as config_lib
    from ballot_jax import experiment

    task = SimpleNamespace(num_classes=3)
    config = config_lib.base_config()
    config.conv_impl = "auto_torch"
    config.batch_size = config.eval_batch_size = 8 * jax.device_count()
    split = jax.device_count() > 1  # the test session runs 8 virtual CPU devices (conftest)
    with caplog.at_level("WARNING"):
        assert experiment.build_model(config, task).conv_impl == ("auto" if split else "auto_torch")
    assert ("runs on one device" in caplog.text) == split
    config.data_parallel = False
    assert experiment.build_model(config, task).conv_impl == "auto_torch"


@needs_torch
def test_strided_1x1_kernel_grad_is_right_every_time(path) -> None:
    """PyTorch 2.13's own channels-last kernel gradient of 1x1 stride-2 convolutions was wrong in 57 of
    6,596 random cases on an AVX2 CPU (intermittently, for the same shape); the lowering computes
    1x1 kernel gradients as one matmul instead. Many repeats, as the failure was intermittent."""
    for seed in range(25):
        cin, cout = 1 + seed % 5, 2 + seed % 4
        x, g = _randn((2, 8, 6, cin), seed), _randn((2, 4, 3, cout), seed + 100)
        k = _randn((1, 1, cin, cout), seed + 200)
        want = jnp.einsum("nhwc,nhwo->co", x[:, ::2, ::2, :], g)[None, None]
        got = jax.jit(lambda x, k, g: torch_conv.kernel_grad(x, k, g, (2, 2), ((0, 0), (0, 0))))(x, k, g)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
