"""Tests for ballot_jax.models: registry, architectures, conv/pool lowerings."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ballot_jax import models
from ballot_jax.models import conv as conv_lib


def _randn(shape: tuple[int, ...], seed: int = 0) -> jax.Array:
    """Standard-normal float32 array made on the host (no RNG compile)."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


# Compile with cheap XLA:CPU backend settings (about half the compile time,
# which dominates this file).  Lowering equality is a property of the HLO, so
# the equality tests use them too.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _run_fast(fn, *args):
    """``jax.jit(fn)(*args)`` compiled with :data:`FAST_COMPILE` options."""
    return jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE)(*args)


def _param_count(name: str, num_classes: int, stem: str, hw: int) -> int:
    """Number of entries in the "params" collection, without real compute."""
    model = models.create(name, num_classes=num_classes, stem=stem)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, hw, hw, 3)), train=False)
    )
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(shapes["params"]))


# ---------------------------------------------------------------- registry


def test_names_sorted_and_complete() -> None:
    names = models.names()
    assert names == sorted(names)
    assert {"resnet18", "resnet50", "vgg16", "cnn_small"} <= set(names)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError) as err:
        models.create("resnet1000", num_classes=10)
    assert str(models.names()) in str(err.value)


def test_bad_stem_lists_valid_stems() -> None:
    with pytest.raises(ValueError) as err:
        models.create("resnet18", num_classes=10, stem="tiny")
    assert "['cifar', 'imagenet']" in str(err.value)


def test_bad_conv_impl() -> None:
    with pytest.raises(ValueError, match=r"\['auto', 'auto_torch', 'hybrid', 'patches', 'torch', 'xla'\]"):
        models.create("resnet18", num_classes=10, conv_impl="fft")
    with pytest.raises(ValueError, match="auto"):
        jax.eval_shape(
            lambda: conv_lib.Conv(4, impl="fft").init(
                jax.random.PRNGKey(0), jnp.ones((1, 4, 4, 1))
            )
        )
    with pytest.raises(ValueError, match="auto"):
        conv_lib.max_pool_impl(jnp.ones((1, 4, 4, 1)), 2, 2, impl="fft")


def test_register_custom_model() -> None:
    @models.register("_test_dummy")
    def _build(*, num_classes, width, stem, dtype, conv_impl):
        del width, stem, dtype, conv_impl
        return nn.Dense(num_classes)

    try:
        assert "_test_dummy" in models.names()
        assert isinstance(models.create("_test_dummy", num_classes=3), nn.Dense)
        with pytest.raises(ValueError, match="already registered"):
            models.register("_test_dummy")(_build)
    finally:
        models._REGISTRY.pop("_test_dummy", None)


# ---------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    "name,num_classes,stem,hw,expected",
    [
        ("resnet18", 10, "cifar", 32, 11_173_962),
        ("resnet50", 1000, "imagenet", 64, 25_557_032),
        ("vgg16", 10, "cifar", 32, 14_728_266),
        ("cnn_small", 10, "cifar", 16, 3_922),
    ],
)
def test_param_counts(name: str, num_classes: int, stem: str, hw: int, expected: int) -> None:
    assert _param_count(name, num_classes, stem, hw) == expected


def test_param_count_does_not_depend_on_input_size() -> None:
    small = _param_count("resnet18", 10, "imagenet", 8)
    assert small == _param_count("resnet18", 10, "imagenet", 40)


def test_width_scales_channels() -> None:
    model = models.create("resnet18", num_classes=10, width=0.125)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), train=False)
    )
    params = shapes["params"]
    assert params["stem"]["kernel"].shape == (3, 3, 3, 8)
    assert params["head"]["kernel"].shape == (64, 10)
    tiny = models.create("cnn_small", num_classes=2, width=0.01)
    shapes = jax.eval_shape(
        lambda: tiny.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), train=False)
    )
    assert shapes["params"]["stem"]["kernel"].shape == (3, 3, 3, 1)


# ---------------------------------------------------------------- forward


def _host_init(model: nn.Module, x: jax.Array) -> dict:
    """Variables with the shapes of ``model.init`` filled on the host.

    Avoids compiling the (slow to compile on CPU) random initialisers; the
    values are He-like for kernels and neutral for BN.
    """
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        last = path[-1].key
        if last == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            value = rng.standard_normal(leaf.shape) * np.sqrt(2.0 / fan_in)
        elif last in ("scale", "var"):
            value = np.ones(leaf.shape)
        else:
            value = np.zeros(leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def _tiny_outputs(name: str, stem: str, dtype=jnp.float32, hw: int = 16, conv_impl: str = "auto"):
    """Train and eval forward of a tiny model in one jit."""
    model = models.create(
        name, num_classes=5, width=0.125, stem=stem, dtype=dtype, conv_impl=conv_impl
    )
    x = _randn((2, hw, hw, 3), 1)
    variables = _host_init(model, x)

    def run(variables, x):
        train_logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        eval_logits = model.apply(variables, x, train=False)
        return train_logits, updates, eval_logits

    return variables, _run_fast(run, variables, x)


@pytest.mark.parametrize(
    "name,stem,hw,conv_impl",
    [
        # "xla" keeps compile times low; "auto" (im2col / hybrid / slice
        # max-pool on CPU) is covered at the smallest supported input, where
        # maps shrink to 1x1, and by the equality tests below.
        ("resnet18", "cifar", 16, "xla"),
        ("resnet18", "imagenet", 8, "auto"),
        ("resnet50", "imagenet", 16, "xla"),
        ("vgg16", "cifar", 8, "xla"),
        ("cnn_small", "cifar", 16, "auto"),
    ],
)
def test_forward_shapes_and_batch_stats(name: str, stem: str, hw: int, conv_impl: str) -> None:
    variables, (train_logits, updates, eval_logits) = _tiny_outputs(
        name, stem, hw=hw, conv_impl=conv_impl
    )
    assert set(variables) == {"params", "batch_stats"}
    chex.assert_shape([train_logits, eval_logits], (2, 5))
    chex.assert_type([train_logits, eval_logits], jnp.float32)
    chex.assert_tree_all_finite((train_logits, eval_logits))
    # train mode updates the running statistics (momentum 0.9)
    chex.assert_trees_all_equal_structs(updates["batch_stats"], variables["batch_stats"])
    means = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map_with_path(
            lambda p, v: v if p[-1].key == "mean" else None, updates["batch_stats"]
        )
    )
    assert any(np.abs(np.asarray(m)).max() > 0 for m in means)


def test_real_init_and_bn_momentum() -> None:
    model = models.create("cnn_small", num_classes=4)
    x = _randn((4, 8, 8, 3), 1) * 2.0 + 1.0
    # rbg keys: threefry initialisers compile very slowly on XLA:CPU
    key = jax.random.key(0, impl="rbg")

    def run(x):
        variables = model.init(key, x, train=False)
        _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
        stem_out = jax.lax.conv_general_dilated(
            x, variables["params"]["stem"]["kernel"], (1, 1), ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return variables, updates, stem_out.mean(axis=(0, 1, 2))

    variables, updates, batch_mean = _run_fast(run, x)
    chex.assert_trees_all_equal_shapes_and_dtypes(variables, _host_init(model, x))
    assert float(jnp.std(variables["params"]["stem"]["kernel"])) > 0
    # running mean <- 0.9 * 0 + 0.1 * batch mean
    chex.assert_trees_all_close(
        updates["batch_stats"]["bn0"]["mean"], 0.1 * batch_mean, rtol=1e-4, atol=1e-6
    )


def test_bfloat16_compute_gives_float32_logits() -> None:
    # 8x8 input: cnn_small's last conv sees a 2x2 map (im2col path on CPU)
    variables, (train_logits, _, eval_logits) = _tiny_outputs(
        "cnn_small", "cifar", dtype=jnp.bfloat16, hw=8
    )
    chex.assert_type([train_logits, eval_logits], jnp.float32)
    chex.assert_tree_all_finite(eval_logits)
    for leaf in jax.tree_util.tree_leaves(variables["params"]):
        assert leaf.dtype == jnp.float32


@pytest.mark.parametrize("name,stem", [("resnet18", "cifar"), ("resnet50", "imagenet"),
                                       ("vgg16", "cifar"), ("cnn_small", "cifar")])
def test_naming_convention(name: str, stem: str) -> None:
    model = models.create(name, num_classes=5, stem=stem)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)), train=False)
    )
    params = shapes["params"]
    assert "stem" in params and "head" in params
    assert params["stem"]["kernel"].ndim == 4
    assert params["head"]["kernel"].ndim == 2 and "bias" in params["head"]
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    for path, leaf in flat:
        if path[-1].key == "kernel":
            expected = 2 if path[0].key == "head" else 4
            assert leaf.ndim == expected, path
        else:  # biases, BN scales: every weight matrix/tensor is a "kernel"
            assert leaf.ndim == 1, path
    if name != "vgg16":  # convs followed by BN carry no bias
        biases = [path for path, _ in flat if path[-1].key == "bias" and path[0].key != "head"]
        assert all("bn" in str(path[-2].key) for path in biases), biases


# ---------------------------------------------------------------- conv impls

CONV_CASES = [
    # (input shape, features, kernel, strides, padding)
    ((2, 9, 9, 3), 4, (3, 3), 1, "SAME"),
    ((2, 8, 8, 3), 5, (3, 3), 2, "SAME"),
    ((2, 8, 8, 4), 6, (3, 3), 2, 1),
    ((2, 8, 6, 4), 3, (1, 1), 2, 0),
    ((2, 9, 9, 3), 4, (5, 5), 2, 2),
    ((2, 1, 1, 4), 3, (3, 3), 2, 1),
    ((2, 4, 4, 8), 8, (3, 3), 1, 1),
    ((2, 2, 2, 8), 8, (3, 3), 1, 1),
    ((2, 7, 5, 3), 4, (2, 2), 1, "VALID"),
    ((2, 6, 7, 3), 4, (3, 1), (2, 1), ((1, 0), (0, 2))),
]


# Every lowering of every product appears at least once: the uniform plans and mixed ones.
MIXED_PLANS = ("patches", "hybrid", "patches/xla/offsets", "xla/patches/patches", "patches/patches/xla")


@pytest.mark.parametrize("shape,features,kernel_size,strides,padding", CONV_CASES)
def test_conv_impls_match(shape, features, kernel_size, strides, padding) -> None:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    ks = conv_lib._pair(kernel_size, "k")
    st = conv_lib._pair(strides, "s")

    def make(impl):
        return conv_lib.Conv(features, kernel_size, strides, padding, use_bias=True, impl=impl)

    # the param tree is the same whatever the lowering
    trees = {
        impl: jax.eval_shape(lambda impl=impl: make(impl).init(jax.random.PRNGKey(1), x))
        for impl in ("xla", "patches", "auto")
    }
    for impl in ("patches", "auto"):
        chex.assert_trees_all_equal_shapes_and_dtypes(trees[impl], trees["xla"])
    params = {
        "params": {
            "kernel": jnp.asarray(rng.standard_normal(ks + (shape[-1], features)), jnp.float32),
            "bias": jnp.asarray(rng.standard_normal((features,)), jnp.float32),
        }
    }
    chex.assert_trees_all_equal_shapes_and_dtypes(params, trees["xla"])

    def run(params, x):
        ref = nn.Conv(features, kernel_size, strides, padding).apply(params, x)
        cot = jnp.cos(jnp.arange(ref.size, dtype=jnp.float32)).reshape(ref.shape)
        # "auto" only dispatches to one of these (checked below and by
        # test_model_auto_matches_xla), so it is not compiled again here.
        fns = {impl: make(impl).apply for impl in ("xla",) + MIXED_PLANS}
        results = {}
        for impl, fn in fns.items():
            y, vjp = jax.vjp(fn, params, x)
            results[impl] = (y, vjp(cot))
        return ref, results

    ref, results = _run_fast(run, params, x)
    chex.assert_trees_all_close(results["xla"][0], ref, rtol=1e-5, atol=1e-5)
    for impl in MIXED_PLANS:
        chex.assert_trees_all_close(results[impl], results["xla"], rtol=1e-5, atol=1e-5)
    assert conv_lib.choose_conv_impl(shape[1:3], ks, st, shape[-1], features) in results


def test_conv_bf16_dtype() -> None:
    x = jnp.ones((1, 4, 4, 3))
    mods = [conv_lib.Conv(4, 3, dtype=jnp.bfloat16, impl=impl) for impl in ("patches", "auto")]
    params = jax.eval_shape(lambda: mods[0].init(jax.random.PRNGKey(0), x))
    assert params["params"]["kernel"].dtype == jnp.float32
    params = jax.tree_util.tree_map(lambda s: jnp.ones(s.shape, s.dtype), params)
    outs = _run_fast(lambda p, x: [m.apply(p, x) for m in mods], params, x)
    chex.assert_type(outs, jnp.bfloat16)


def test_choose_conv_impl_rule() -> None:
    choose = conv_lib.choose_conv_impl
    assert choose((2, 2), (3, 3), (1, 1), 512, 512, platform="gpu") == "xla"
    assert choose((32, 32), (3, 3), (1, 1), 64, 64, platform="tpu") == "xla"
    assert choose((2, 2), (3, 3), (1, 1), 512, 512, platform="cpu") == "patches"
    assert choose((4, 4), (3, 3), (2, 2), 256, 512, platform="cpu") == "patches"
    assert choose((64, 64), (7, 7), (2, 2), 3, 64, platform="cpu") == "xla"
    assert choose((32, 32), (3, 3), (1, 1), 64, 64, platform="cpu") == "hybrid"
    assert choose((16, 16), (1, 1), (2, 2), 64, 128, platform="cpu") == "hybrid"


def test_conv_plans_parse_and_refuse() -> None:
    assert conv_lib.parse_plan("hybrid") == ("xla", "xla", "offsets")
    assert conv_lib.parse_plan("patches/xla/offsets") == ("patches", "xla", "offsets")
    for bad in ("fast", "xla/offsets/xla", "xla/xla", "offsets/xla/xla"):
        with pytest.raises(ValueError, match="forward/input_grad/kernel_grad"):
            conv_lib.parse_plan(bad)
    x = jnp.zeros((1, 4, 4, 3))
    with pytest.raises(ValueError, match="e.g. 'xla/patches/offsets'"):
        jax.eval_shape(lambda: conv_lib.Conv(2, impl="xla/offsets/xla").init(jax.random.PRNGKey(0), x))
    with pytest.raises(ValueError, match="forward/input_grad/kernel_grad"):
        conv_lib.max_pool_impl(x, 2, 2, impl="bogus")
    # a plan for the convolutions pools by strided slices, like "patches"
    y = conv_lib.max_pool_impl(x, 2, 2, impl="xla/patches/offsets")
    assert y.shape == (1, 2, 2, 3)


def test_model_auto_matches_xla() -> None:
    # 16x16 input: convs on 16x16 and 8x8 maps (hybrid) and 4x4 maps (im2col)
    x = _randn((2, 16, 16, 3))
    labels = jnp.array([0, 1])
    built = {
        impl: models.create("cnn_small", num_classes=3, conv_impl=impl) for impl in ("xla", "auto")
    }
    variables = _host_init(built["xla"], x)

    def run(variables, x):
        out = {}
        for impl, model in built.items():

            def loss(params, model=model):
                logits, _ = model.apply(
                    {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
                )
                logp = jax.nn.log_softmax(logits)
                return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], 1))

            out[impl] = jax.value_and_grad(loss)(variables["params"])
        return out

    out = _run_fast(run, variables, x)
    chex.assert_trees_all_close(out["auto"], out["xla"], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- max-pool

POOL_CASES = [
    ((2, 9, 9, 3), 3, 2, 1),
    ((2, 8, 8, 3), 3, 2, ((1, 1), (1, 1))),
    ((2, 8, 8, 3), 2, 2, "VALID"),
    ((2, 5, 7, 3), 2, 2, "SAME"),
    ((2, 6, 6, 2), 3, 1, "SAME"),
    ((1, 1, 1, 4), 2, 2, "SAME"),
]


@pytest.mark.parametrize("shape,window,strides,padding", POOL_CASES)
def test_max_pool_matches_flax(shape, window, strides, padding) -> None:
    x = _randn(shape)
    w = conv_lib._pair(window, "w")
    st = conv_lib._pair(strides, "s")
    pads = conv_lib.normalize_padding(padding, shape[1:3], w, st)

    def run(x):
        y_ref, vjp_ref = jax.vjp(lambda x: nn.max_pool(x, w, st, pads), x)
        y, vjp = jax.vjp(lambda x: conv_lib.max_pool(x, window, strides, padding), x)
        cot = jnp.cos(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape)
        y_xla = conv_lib.max_pool_impl(x, window, strides, padding, impl="xla")
        return y, y_ref, y_xla, vjp(cot), vjp_ref(cot)

    y, y_ref, y_xla, g, g_ref = _run_fast(run, x)
    chex.assert_trees_all_equal(y, y_ref)
    chex.assert_trees_all_equal(y_xla, y_ref)
    chex.assert_trees_all_close(g, g_ref, rtol=1e-6, atol=1e-6)


def test_max_pool_ties_follow_flax() -> None:
    x = jnp.zeros((1, 4, 4, 1))

    def ref(x):
        return nn.max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1))).sum()

    def ours(x):
        return conv_lib.max_pool(x, 3, 2, 1).sum()

    g, g_ref = _run_fast(lambda x: (jax.grad(ours)(x), jax.grad(ref)(x)), x)
    chex.assert_trees_all_equal(g, g_ref)


@pytest.mark.parametrize("name,stem", [("resnet18", "imagenet"), ("cnn_small", "cifar")])
def test_init_variables_equals_model_init_bit_for_bit(name: str, stem: str) -> None:
    """experiment.init_variables skips the forward pass (lazy_init) but must draw exactly θ0 of
    model.init: every seed's results depend on it."""
    from ballot_jax import experiment

    model = models.create(name, num_classes=3, width=0.125, stem=stem, conv_impl="auto")
    got = experiment.init_variables(model, (16, 16, 3), 3)
    ref = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 16, 16, 3), jnp.float32), train=False)
    ref = {"params": ref["params"], "batch_stats": ref.get("batch_stats", {})}
    chex.assert_trees_all_equal(got, ref)
    chex.assert_trees_all_equal_dtypes(got, ref)


class _NormWithCounter(nn.BatchNorm):
    """A BatchNorm subclass with its own ``__call__`` (an extra variable): it must run as written."""

    @nn.compact
    def __call__(self, x, use_running_average=None, *, mask=None):
        self.variable("batch_stats", "calls", lambda: jnp.zeros((), jnp.int32))
        return super().__call__(x, use_running_average, mask=mask)


class _Subclassed(nn.Module):
    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return _NormWithCounter(use_running_average=not train, name="norm")(x)


class _Norms(nn.Module):
    """Batch norms in several flax configurations, for the declare-only initialisation."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(7, (3, 3), name="conv")(x)  # 7 features: no other test compiles ops of that shape
        x = nn.BatchNorm(use_running_average=not train, name="plain")(x)
        x = nn.BatchNorm(use_running_average=not train, use_scale=False, name="no_scale")(x)
        x = nn.BatchNorm(use_running_average=not train, use_bias=False, scale_init=nn.initializers.normal(0.5),
                         name="drawn_scale")(x)
        x = nn.BatchNorm(use_running_average=not train, axis=(1, -1), param_dtype=jnp.bfloat16,
                         force_float32_reductions=False, name="two_axes")(x)
        x = nn.BatchNorm(use_running_average=not train, bias_init=nn.initializers.constant(0.25), name="bias")(x)
        return nn.Dense(3, name="head")(x.mean(axis=(1, 2)))


def test_init_variables_declares_every_batch_norm_like_flax_without_its_arithmetic() -> None:
    """init_variables intercepts BatchNorm calls (declare only, return the input): the variables
    must be model.init's in every flax configuration, and no normalisation op may compile."""
    from ballot_jax import experiment

    compiled = []

    def listen(event, duration, **kw):
        if event.endswith("backend_compile_duration"):
            compiled.append(str(kw.get("fun_name")))

    model = _Norms()
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        got = experiment.init_variables(model, (6, 6, 2), 7)
        ours = list(compiled)
        model.lazy_init(jax.random.PRNGKey(7), jax.ShapeDtypeStruct((1, 6, 6, 2), jnp.float32), train=False)
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    # control: plain lazy_init compiles it (else the listener or a cached op would hide it)
    assert [f for f in compiled[len(ours):] if "rsqrt" in f], compiled[len(ours):]
    assert not [f for f in ours if "rsqrt" in f], ours  # the inference-mode normalisation
    ref = model.init(jax.random.PRNGKey(7), jnp.zeros((1, 6, 6, 2), jnp.float32), train=False)
    ref = {"params": ref["params"], "batch_stats": ref["batch_stats"]}
    chex.assert_trees_all_equal(got, ref)
    chex.assert_trees_all_equal_dtypes(got, ref)
    # a subclass with its own __call__ is not intercepted: its extra variable is declared
    subclassed = _Subclassed()
    got = experiment.init_variables(subclassed, (3, 3, 2), 1)
    ref = subclassed.init(jax.random.PRNGKey(1), jnp.zeros((1, 3, 3, 2), jnp.float32), train=False)
    assert "calls" in got["batch_stats"]["norm"]
    chex.assert_trees_all_equal(got, {"params": ref["params"], "batch_stats": ref["batch_stats"]})


def test_conv_kernel_init_is_flax_he_normal_bit_for_bit_with_one_compiled_draw() -> None:
    """conv_kernel_init cuts a long shared draw instead of compiling one draw per shape; the weights
    must still be exactly variance_scaling(2.0, "fan_out", "normal")'s (every seed's θ0 depends on it)."""
    import flax.linen as nn

    reference = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    conv_lib._standard_normal.clear_cache()
    small = [(7, 7, 3, 64), (3, 3, 64, 64), (1, 1, 64, 128), (3, 3, 3, 5), (3, 1, 2, 7), (4, 9)]
    for i, shape in enumerate(small + [(3, 3, 256, 512)]):  # the last one needs a longer draw (2**21)
        key = jax.random.PRNGKey(i)
        got, want = conv_lib.conv_kernel_init(key, shape), reference(key, shape, jnp.float32)
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got).view(np.uint32), np.asarray(want).view(np.uint32))
        if i == len(small) - 1:
            assert conv_lib._standard_normal._cache_size() == 1  # every shape up to 2**20 weights: one draw
    assert conv_lib._standard_normal._cache_size() == 2
    # inside a trace (model.init under jit) the standard initialiser runs, with its own jit rounding
    key = jax.random.PRNGKey(9)
    traced = jax.jit(lambda k: conv_lib.conv_kernel_init(k, (3, 3, 8, 16)))(key)
    chex.assert_trees_all_equal(traced, jax.jit(lambda k: reference(k, (3, 3, 8, 16), jnp.float32))(key))
