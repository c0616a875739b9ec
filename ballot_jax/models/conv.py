"""Convolution and max-pooling layers with a selectable lowering.

XLA:CPU lowers some convolutions very slowly (small spatial extent with many
channels, e.g. a 3x3 conv on a 2x2 map with 512 channels, and the input
gradients of such convs; kernel gradients on large maps), and the gradient of
``lax.reduce_window`` max-pool (``select_and_scatter_add``) is slow as well.
This module offers:

* :class:`Conv`, a drop-in replacement for ``flax.linen.Conv`` (2-D, NHWC)
  whose parameter tree does not depend on how the convolution is computed.
  ``impl`` chooses the lowering:

  - ``"xla"``: ``jax.lax.conv_general_dilated``;
  - ``"patches"``: im2col built from strided slices of the padded input,
    followed by a single matmul (a 1x1 conv is a plain matmul);
  - ``"hybrid"``: XLA forward and input gradient, kernel gradient as one
    matmul per kernel offset (:func:`kernel_grad_by_offsets`);
  - ``"torch"``: all three products by PyTorch's CPU kernels (oneDNN), called
    from inside the jitted step (:mod:`.torch_conv`; needs ``pip install torch``);
  - a plan ``"forward/input_grad/kernel_grad"`` naming the lowering of each
    product separately, e.g. ``"xla/patches/offsets"`` (:func:`parse_plan`,
    :func:`conv_planned`); the names above are such plans;
  - ``"auto"``: ``"xla"`` on GPU/TPU; on CPU a per-shape rule
    (:func:`choose_conv_impl`) picks ``"patches"``, ``"xla"`` or ``"hybrid"``;
  - ``"auto_torch"``: like ``"auto"``, but on CPU the convolutions with large
    outputs (side >= :data:`TORCH_MIN_OUTPUT_SIDE`, or at least
    :data:`TORCH_MIN_OUTPUT_ROWS` batch x output positions) use ``"torch"``.

  All lowerings compute the same function (and gradients) up to float
  rounding.

* :func:`max_pool`, a max-pool built from strided slices and
  ``jnp.maximum`` with a custom gradient that routes the cotangent to the
  first maximal element of each window, exactly like ``flax.linen.max_pool``
  (``select_and_scatter_add``) but without its slow CPU lowering (3x3/2
  pool on 32x32x64, batch 32, forward + backward: ~17 ms vs ~80 ms CPU time).
  :func:`max_pool_impl` selects between the two with the same ``impl``
  names as :class:`Conv`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from ballot_jax.models import torch_conv

IMPLS = ("auto", "auto_torch", "patches", "xla")
AUTO_IMPLS = ("auto", "auto_torch")

# Thresholds of the CPU rule in choose_conv_impl (measured, see there).
SMALL_SPATIAL = 4
LARGE_KERNEL_AREA = 25
# Output side from which "auto_torch" hands a convolution to PyTorch (measured, see choose_conv_impl).
TORCH_MIN_OUTPUT_SIDE = 8
# Output rows (batch x output positions) from which "auto_torch" hands a smaller map to PyTorch too
# (measured, see choose_conv_impl).
TORCH_MIN_OUTPUT_ROWS = 4096

PaddingLike = str | int | Sequence[int] | Sequence[tuple[int, int]]
Array = jax.Array


def _pair(v: int | Sequence[int], what: str) -> tuple[int, int]:
    """Return ``v`` as a pair of ints (a scalar is repeated)."""
    if isinstance(v, (int, np.integer)):
        return (int(v), int(v))
    v = tuple(int(e) for e in v)
    if len(v) != 2:
        raise ValueError(f"{what} must be an int or a pair, got {v}")
    return v  # type: ignore[return-value]


def normalize_padding(
    padding: PaddingLike,
    in_hw: tuple[int, int],
    kernel_size: tuple[int, int],
    strides: tuple[int, int],
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Turn a flax-style padding spec into explicit ``((lo, hi), (lo, hi))``.

    Accepts ``"SAME"``, ``"VALID"``, an int (same on every side), a pair of
    ints (symmetric per spatial dim) or a pair of ``(lo, hi)`` pairs.
    """
    if isinstance(padding, str):
        p = padding.upper()
        if p not in ("SAME", "VALID"):
            raise ValueError(f"padding must be 'SAME', 'VALID' or explicit, got {padding!r}")
        pads = jax.lax.padtype_to_pads(in_hw, kernel_size, strides, p)
        return tuple((int(lo), int(hi)) for lo, hi in pads)  # type: ignore[return-value]
    if isinstance(padding, (int, np.integer)):
        return ((int(padding),) * 2, (int(padding),) * 2)  # type: ignore[return-value]
    padding = tuple(padding)
    if len(padding) != 2:
        raise ValueError(f"padding must describe 2 spatial dims, got {padding}")
    out = []
    for p in padding:
        if isinstance(p, (int, np.integer)):
            out.append((int(p), int(p)))
        else:
            lo, hi = p
            out.append((int(lo), int(hi)))
    return tuple(out)  # type: ignore[return-value]


def _out_size(n: int, k: int, s: int, lo: int, hi: int) -> int:
    """Output length of a VALID window op over a padded axis."""
    return (n + lo + hi - k) // s + 1


def _strided_windows(
    x: Array,
    kernel_size: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
    pad_value: float = 0.0,
) -> tuple[list[Array], tuple[int, int]]:
    """Slices of padded NHWC ``x``, one per kernel offset (row-major order).

    Slice ``(i, j)`` has shape ``[B, Ho, Wo, C]`` and holds
    ``xpad[:, i + s_h * oh, j + s_w * ow, :]``.
    """
    (kh, kw), (sh, sw) = kernel_size, strides
    (plh, phh), (plw, phw) = pads
    _, h, w, _ = x.shape
    ho = _out_size(h, kh, sh, plh, phh)
    wo = _out_size(w, kw, sw, plw, phw)
    if ho <= 0 or wo <= 0:
        raise ValueError(
            f"window {kernel_size} does not fit input {x.shape[1:3]} with pads {pads}"
        )
    if any(p != 0 for pair in pads for p in pair):
        # Negative padding (cropping) is allowed by lax.pad as well.
        x = jax.lax.pad(
            x,
            jnp.array(pad_value, x.dtype),
            ((0, 0, 0), (plh, phh, 0), (plw, phw, 0), (0, 0, 0)),
        )
    slices = []
    for i in range(kh):
        for j in range(kw):
            slices.append(
                jax.lax.slice(
                    x,
                    (0, i, j, 0),
                    (x.shape[0], i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, x.shape[3]),
                    (1, sh, sw, 1),
                )
            )
    return slices, (ho, wo)


def conv_patches(
    x: Array,
    kernel: Array,
    strides: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
    precision: Any = None,
) -> Array:
    """2-D NHWC/HWIO convolution computed as im2col + one matmul.

    The im2col matrix is the channel-wise concatenation of the strided
    slices of the padded input, ordered like the rows of the HWIO kernel
    reshaped to ``[kh * kw * I, O]``.
    """
    kh, kw, cin, cout = kernel.shape
    if (kh, kw) == (1, 1) and pads == ((0, 0), (0, 0)):
        sh, sw = strides
        if (sh, sw) != (1, 1):
            x = x[:, ::sh, ::sw, :]
        return jnp.einsum("bhwc,co->bhwo", x, kernel[0, 0], precision=precision)
    slices, (ho, wo) = _strided_windows(x, (kh, kw), strides, pads)
    cols = slices[0] if len(slices) == 1 else jnp.concatenate(slices, axis=-1)
    w2 = kernel.reshape(kh * kw * cin, cout)
    return jnp.einsum("bhwk,ko->bhwo", cols, w2, precision=precision)


def conv_xla(
    x: Array,
    kernel: Array,
    strides: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
    precision: Any = None,
) -> Array:
    """2-D NHWC/HWIO convolution via ``lax.conv_general_dilated``."""
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        window_strides=strides,
        padding=pads,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=precision,
    )


def kernel_grad_by_offsets(
    x: Array,
    g: Array,
    kernel_size: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
    precision: Any = None,
) -> Array:
    """Gradient of a conv w.r.t. its HWIO kernel, one matmul per offset.

    ``dK[i, j] = window_ij(x)^T @ g`` contracted over batch and output
    positions; this never builds the full im2col matrix.
    """
    slices, _ = _strided_windows(x, kernel_size, strides, pads)
    # Contract as g^T @ window (not window^T @ g): XLA then transposes g once
    # instead of every window.
    parts = [jnp.einsum("bhwo,bhwc->oc", g, s, precision=precision) for s in slices]
    kh, kw = kernel_size
    return jnp.stack(parts).reshape(kh, kw, g.shape[-1], x.shape[-1]).transpose(0, 1, 3, 2)


# How each of a convolution's three products is computed: the forward pass, the input gradient and
# the kernel gradient ("offsets" = one matmul per kernel offset, kernel gradient only; "torch" =
# PyTorch's CPU kernel, see torch_conv).
FORWARD_LOWERINGS = ("xla", "patches", "torch")
INPUT_GRAD_LOWERINGS = ("xla", "patches", "torch")
KERNEL_GRAD_LOWERINGS = ("xla", "patches", "offsets", "torch")
# Named plans "auto" / "auto_torch" may pick; any "forward/input_grad/kernel_grad" triple is accepted too.
PLANS = {"xla": ("xla", "xla", "xla"), "patches": ("patches", "patches", "patches"),
         "hybrid": ("xla", "xla", "offsets"), "torch": ("torch", "torch", "torch")}


def parse_plan(impl: str) -> tuple[str, str, str]:
    """``(forward, input_grad, kernel_grad)`` lowerings of a plan name or an ``"f/d/k"`` triple."""
    if impl in PLANS:
        return PLANS[impl]
    parts = tuple(impl.split("/"))
    if (len(parts) != 3 or parts[0] not in FORWARD_LOWERINGS or parts[1] not in INPUT_GRAD_LOWERINGS
            or parts[2] not in KERNEL_GRAD_LOWERINGS):
        raise ValueError(
            f"conv lowering (conv_impl) {impl!r} is neither one of {sorted(set(IMPLS) | set(PLANS))} nor a "
            f"'forward/input_grad/kernel_grad' triple with forward in {FORWARD_LOWERINGS}, input_grad in "
            f"{INPUT_GRAD_LOWERINGS} and kernel_grad in {KERNEL_GRAD_LOWERINGS} (e.g. 'xla/patches/offsets')")
    return parts  # type: ignore[return-value]


def check_impl(impl: str) -> str:
    """Return ``impl`` if it is ``"auto"``, ``"auto_torch"``, a plan name or a plan triple; else
    ``ValueError`` (also when a plan needs PyTorch and it cannot run here, see :mod:`.torch_conv`)."""
    if impl == "auto_torch":
        if jax.default_backend() == "cpu":
            torch_conv.require()
    elif impl != "auto" and "torch" in parse_plan(impl):
        torch_conv.require()
    return impl


def conv_torch(
    x: Array, kernel: Array, strides: tuple[int, int], pads: tuple[tuple[int, int], tuple[int, int]],
    precision: Any = None,
) -> Array:
    """2-D NHWC/HWIO convolution by PyTorch's CPU kernel (:func:`.torch_conv.forward`; ``precision``
    does not apply: PyTorch computes in the inputs' dtype)."""
    del precision
    (top, bottom), (left, right) = pads
    out_shape = (x.shape[0], _out_size(x.shape[1], kernel.shape[0], strides[0], top, bottom),
                 _out_size(x.shape[2], kernel.shape[1], strides[1], left, right), kernel.shape[-1])
    return torch_conv.forward(x, kernel, strides, pads, out_shape)


_FORWARD = {"xla": conv_xla, "patches": conv_patches, "torch": conv_torch}


def _input_grad(how, x, kernel, g, strides, pads, precision):
    """Cotangent of ``x``: by PyTorch, or through the ``how`` forward lowering."""
    if how == "torch":
        return torch_conv.input_grad(x, kernel, g, strides, pads)
    _, vjp_x = jax.vjp(lambda z: _FORWARD[how](z, kernel, strides, pads, precision), x)
    return vjp_x(g)[0]


def _kernel_grad(how, x, kernel, g, strides, pads, precision):
    """Cotangent of ``kernel``: by offsets, by PyTorch, or through the ``how`` forward lowering."""
    if how == "offsets":
        return kernel_grad_by_offsets(x, g, kernel.shape[:2], strides, pads, precision)
    if how == "torch":
        return torch_conv.kernel_grad(x, kernel, g, strides, pads)
    _, vjp_k = jax.vjp(lambda k: _FORWARD[how](x, k, strides, pads, precision), kernel)
    return vjp_k(g)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv_planned(
    x: Array,
    kernel: Array,
    strides: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
    precision: Any = None,
    plan: tuple[str, str, str] = PLANS["hybrid"],
) -> Array:
    """Convolution whose forward pass, input gradient and kernel gradient each use their own lowering.

    ``plan = (forward, input_grad, kernel_grad)`` (see :func:`parse_plan`). Every plan computes the
    function of :func:`conv_xla` and its gradients, up to float rounding; only the lowering differs,
    because on XLA:CPU the fastest lowering of a shape is not the same for the three products.
    """
    return _FORWARD[plan[0]](x, kernel, strides, pads, precision)


def _conv_planned_fwd(x, kernel, strides, pads, precision, plan):
    return _FORWARD[plan[0]](x, kernel, strides, pads, precision), (x, kernel)


def _conv_planned_bwd(strides, pads, precision, plan, res, g):
    x, kernel = res
    gx = _input_grad(plan[1], x, kernel, g, strides, pads, precision)
    gk = _kernel_grad(plan[2], x, kernel, g, strides, pads, precision)
    return gx, gk.astype(kernel.dtype)


conv_planned.defvjp(_conv_planned_fwd, _conv_planned_bwd)


def apply_plan(x: Array, kernel: Array, strides: tuple[int, int],
               pads: tuple[tuple[int, int], tuple[int, int]], precision: Any, impl: str) -> Array:
    """The convolution under lowering ``impl`` (a plan name or triple). The uniform plans "xla" and
    "patches" are differentiated by JAX directly; mixed plans go through :func:`conv_planned`."""
    plan = parse_plan(impl)
    if plan == PLANS["xla"]:
        return conv_xla(x, kernel, strides, pads, precision)
    if plan == PLANS["patches"]:
        return conv_patches(x, kernel, strides, pads, precision)
    return conv_planned(x, kernel, strides, pads, precision, plan)


def choose_conv_impl(
    in_hw: tuple[int, int],
    kernel_size: tuple[int, int],
    strides: tuple[int, int],
    cin: int,
    cout: int,
    platform: str | None = None,
    torch: bool = False,
    batch: int | None = None,
) -> str:
    """Pick the lowering (a plan name of :data:`PLANS`) for a convolution shape.

    On accelerators this is always ``"xla"``. With ``torch`` (``conv_impl="auto_torch"``) on CPU, a
    convolution whose output side is ``>= TORCH_MIN_OUTPUT_SIDE`` (8) uses ``"torch"`` (PyTorch's
    oneDNN direct convolutions): the reference ResNet-18 step (64x64, batch 32) took 180-195 ms with
    8 against 225-237 ms under ``"auto"``, 185-199 ms with 16, 210-217 ms with 32 (stem only) and
    202-203 ms with 4 (oneDNN is slower than im2col on 4x4 and 2x2 maps at batch 32); medians of 4x5
    steps in separate processes, alternated over 3-5 rounds, load 1.5-1.9. So does a smaller map
    when ``batch`` x output positions is ``>= TORCH_MIN_OUTPUT_ROWS`` (4096): the evaluation and
    vote passes of that model at batch 256 (4x4 maps: 4096 rows; 2x2: 1024) ran in 0.93x and 0.86x
    the time with 4096 as with the rule without it, while 1024 (2x2 maps to PyTorch too) gave
    0.95x and 1.02x; both steps also compile faster (with tracing: 1.71 -> 1.21 s and 4.05 -> 3.03 s;
    one process, alternated over 8 rounds, 2-core AMD EPYC with AVX2, load 1.0-1.3;
    ``benchmarks/README.md``). On CPU the rest of the rule was
    chosen by timing the reference
    ResNet-18's whole train step (64x64, batch 32, jax 0.10.2, 2-core AMD EPYC with AVX-512) under
    rival rules side by side, and per convolution product with ``benchmarks/conv_lowerings.py``
    (``benchmarks/README.md`` has both):

    * an input side ``<= SMALL_SPATIAL`` (4) -> ``"patches"``: XLA's convolution is pathological
      there (3x3 on 2x2, 512->512: forward 307 ms vs 3.1 ms as im2col + matmul; input gradient of
      3x3/2 on 4x4: 60 ms vs 1.4 ms);
    * a kernel of area ``>= LARGE_KERNEL_AREA`` (25; the 7x7 stem, whose input gradient nothing
      needs) -> ``"xla"``: forward 3.9 ms vs 12.3 ms im2col, kernel gradient 16.4 vs 20.0 ms; the
      whole step 1.035x faster than with ``"patches"`` there;
    * otherwise (3x3 and 1x1 on maps of 8x8 and larger) -> ``"hybrid"``: XLA's forward and input
      gradient, the kernel gradient as one matmul per offset (16x16, 64->64: 8.1 ms vs 10.6 native,
      16.9 im2col). Per product the input gradient through im2col looked faster still (3.4 vs
      4.2 ms), but the whole step with it was 0.955x as fast, so it is not used.
    """
    if platform is None:
        platform = jax.default_backend()
    if platform != "cpu":
        return "xla"
    if torch:
        out_hw = [-(-n // s) for n, s in zip(in_hw, strides)]
        if min(out_hw) >= TORCH_MIN_OUTPUT_SIDE or (batch or 0) * out_hw[0] * out_hw[1] >= TORCH_MIN_OUTPUT_ROWS:
            return "torch"
    del cin, cout
    if min(in_hw) <= SMALL_SPATIAL:
        return "patches"
    if kernel_size[0] * kernel_size[1] >= LARGE_KERNEL_AREA:
        return "xla"
    return "hybrid"


class Conv(nn.Module):
    """2-D NHWC convolution, a drop-in for ``flax.linen.Conv``.

    Attributes:
      features: number of output channels.
      kernel_size: ``(kh, kw)`` or an int.
      strides: ``(sh, sw)`` or an int.
      padding: ``"SAME"``, ``"VALID"``, an int or explicit ``(lo, hi)`` pairs.
      use_bias: add a bias (param ``"bias"``).
      dtype: compute dtype (``None``: inferred from inputs and params).
      param_dtype: dtype of the parameters.
      precision: matmul/conv precision passed to XLA.
      kernel_init: initializer of the HWIO ``"kernel"`` param.
      bias_init: initializer of ``"bias"``.
      impl: ``"auto"``, ``"auto_torch"``, ``"xla"``, ``"patches"``, ``"hybrid"``,
        ``"torch"`` or a plan ``"forward/input_grad/kernel_grad"`` (see the module
        docstring); the parameter tree is the same for every value.
    """

    features: int
    kernel_size: int | Sequence[int] = (3, 3)
    strides: int | Sequence[int] = 1
    padding: PaddingLike = "SAME"
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    precision: Any = None
    kernel_init: Callable[..., Array] = nn.initializers.lecun_normal()
    bias_init: Callable[..., Array] = nn.initializers.zeros_init()
    impl: str = "xla"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        """Apply the convolution to ``x`` of shape ``[B, H, W, C]``."""
        check_impl(self.impl)
        if x.ndim != 4:
            raise ValueError(f"Conv expects NHWC input, got shape {x.shape}")
        ks = _pair(self.kernel_size, "kernel_size")
        st = _pair(self.strides, "strides")
        cin = x.shape[-1]
        kernel_shape = ks + (cin, self.features)
        kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
        bias = (
            self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias
            else None
        )
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        pads = normalize_padding(self.padding, x.shape[1:3], ks, st)
        impl = self.impl
        if impl in AUTO_IMPLS:
            impl = choose_conv_impl(x.shape[1:3], ks, st, cin, self.features, torch=impl == "auto_torch",
                                    batch=x.shape[0])
        y = apply_plan(x, kernel, st, pads, self.precision, impl)
        if bias is not None:
            y = y + bias
        return y


# --------------------------------------------------------------------------
# max-pool
# --------------------------------------------------------------------------


# He-normal with fan_out, as torchvision initialises ResNet convolutions.
_he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_MIN_DRAW = 2**20  # kernels up to this many weights share one compiled draw


@functools.partial(jax.jit, static_argnums=(1, 2))
def _standard_normal(key: Array, size: int, dtype: Any) -> Array:
    return jax.random.normal(key, (size,), dtype)


def conv_kernel_init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
    """He-normal fan-out kernel: bit for bit ``variance_scaling(2.0, "fan_out", "normal")``, with far
    fewer compilations.

    The standard initialiser compiles one normal draw per kernel shape (ResNet-18: 11 shapes,
    ≈ 4 s of a cold start). With JAX's partitionable threefry (the default) the first ``n`` draws of
    ``normal(key, (N,))`` are ``normal(key, (n,))``, so every kernel draws from a power-of-two size of
    at least 2**20 (one compilation for all of ResNet-18's kernels up to that size) and is cut and
    scaled on the host with the same float32 arithmetic. Traced keys, other dtypes or PRNGs use the
    standard initialiser."""
    shape = tuple(int(d) for d in shape)
    size = int(np.prod(shape))
    if (isinstance(key, jax.core.Tracer) or np.dtype(dtype) != np.float32 or len(shape) < 2 or size == 0
            or not jax.config.jax_threefry_partitionable or jax.config.jax_default_prng_impl != "threefry2x32"):
        return _he_normal_fan_out(key, shape, dtype)
    fan_out = shape[-1] * (size / shape[-2] / shape[-1])  # as jax.nn.initializers' _compute_fans
    std = np.sqrt(np.float32(2.0 / fan_out))
    draws = np.asarray(_standard_normal(key, max(_MIN_DRAW, 1 << (size - 1).bit_length()), np.dtype(dtype)))
    return jnp.asarray((draws[:size] * std).reshape(shape))


def conv_and_norm(dtype: Any, conv_impl: str, train: bool, *, use_bias: bool = False) -> tuple[Callable, Callable]:
    """The (conv, batch-norm) layer constructors every model here uses: He-normal fan-out kernels,
    BatchNorm with momentum 0.9 and ε = 1e-5 (PyTorch's defaults), running averages unless ``train``."""
    conv = functools.partial(Conv, use_bias=use_bias, dtype=dtype, kernel_init=conv_kernel_init, impl=conv_impl)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype)
    return conv, norm


def scale_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded to an int, at least 1."""
    return max(1, int(round(channels * width)))


def _neg_inf(dtype: Any) -> Any:
    """Identity of ``max`` for ``dtype``."""
    if jnp.issubdtype(dtype, jnp.floating):
        return -jnp.inf
    return jnp.iinfo(dtype).min


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool_slices(
    x: Array,
    window: tuple[int, int],
    strides: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
) -> Array:
    """Max over windows as a chain of ``jnp.maximum`` on strided slices."""
    slices, _ = _strided_windows(x, window, strides, pads, _neg_inf(x.dtype))
    return functools.reduce(jnp.maximum, slices)


def _max_pool_fwd(x, window, strides, pads):
    y = _max_pool_slices(x, window, strides, pads)
    return y, (x, y)


def _max_pool_bwd(window, strides, pads, res, g):
    x, y = res
    slices, _ = _strided_windows(x, window, strides, pads, _neg_inf(x.dtype))
    # Route g to the first (row-major) maximal element of each window, the
    # same tie rule as select_and_scatter_add with `ge`.
    pending = jnp.ones(y.shape, bool)
    parts = []
    for s in slices:
        hit = pending & (s == y)
        parts.append(jnp.where(hit, g, jnp.zeros_like(g)))
        pending = pending & ~hit
    # Transpose of the slicing: the VJP of the (linear) window extraction.
    _, vjp = jax.vjp(lambda z: _strided_windows(z, window, strides, pads)[0], x)
    (gx,) = vjp(parts)
    return (gx,)


_max_pool_slices.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool(
    x: Array,
    window_shape: int | Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: PaddingLike = "VALID",
) -> Array:
    """Max-pool NHWC ``x``; same result and gradient as ``flax.linen.max_pool``.

    Built from strided slices + ``jnp.maximum`` so that neither the forward
    nor the backward pass uses ``reduce_window``/``select_and_scatter_add``.
    Padded positions hold ``-inf`` and never win.  On ties the gradient goes
    to the first maximal element of the window in row-major order.
    """
    window = _pair(window_shape, "window_shape")
    st = _pair(strides if strides is not None else 1, "strides")
    pads = normalize_padding(padding, x.shape[1:3], window, st)
    return _max_pool_slices(x, window, st, pads)


def choose_pool_impl(platform: str | None = None) -> str:
    """``"auto"`` max-pool lowering: ``"patches"`` (strided slices,
    :func:`max_pool`) on CPU, ``"xla"`` (``reduce_window``) elsewhere."""
    if platform is None:
        platform = jax.default_backend()
    return "patches" if platform == "cpu" else "xla"


def max_pool_impl(
    x: Array,
    window_shape: int | Sequence[int],
    strides: int | Sequence[int] | None = None,
    padding: PaddingLike = "VALID",
    impl: str = "xla",
) -> Array:
    """Max-pool with a selectable lowering (same values for every ``impl``).

    ``"xla"`` is ``flax.linen.max_pool``; any other convolution lowering (``"patches"``, a plan,
    see :func:`parse_plan`) is :func:`max_pool`; ``"auto"`` and ``"auto_torch"`` pick via
    :func:`choose_pool_impl`.
    """
    if check_impl(impl) in AUTO_IMPLS:
        impl = choose_pool_impl()
    if impl == "xla":
        window = _pair(window_shape, "window_shape")
        st = _pair(strides if strides is not None else 1, "strides")
        pads = normalize_padding(padding, x.shape[1:3], window, st)
        return nn.max_pool(x, window, st, pads)
    return max_pool(x, window_shape, strides, padding)
