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
  - ``"auto"``: ``"xla"`` on GPU/TPU; on CPU a per-shape rule
    (:func:`choose_conv_impl`) picks ``"patches"`` or ``"hybrid"``
    (:func:`conv_hybrid`: XLA forward and input gradient, kernel gradient
    as one matmul per kernel offset).

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

IMPLS = ("auto", "patches", "xla")
# Lowerings "auto" may pick (on CPU); "hybrid" = XLA forward/input-grad +
# per-offset matmul kernel-grad.
LOWERINGS = ("hybrid", "patches", "xla")

# Thresholds of the CPU rule in choose_conv_impl (measured, see there).
SMALL_SPATIAL = 4
LARGE_KERNEL_AREA = 25

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


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_hybrid(
    x: Array,
    kernel: Array,
    strides: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
    precision: Any = None,
) -> Array:
    """Convolution with XLA forward/input-gradient and a matmul kernel-gradient.

    Computes the same function as :func:`conv_xla`; only the kernel gradient
    differs in lowering (:func:`kernel_grad_by_offsets`), because XLA:CPU's
    native kernel-gradient convolution is slow on larger feature maps.
    """
    return conv_xla(x, kernel, strides, pads, precision)


def _conv_hybrid_fwd(x, kernel, strides, pads, precision):
    return conv_xla(x, kernel, strides, pads, precision), (x, kernel)


def _conv_hybrid_bwd(strides, pads, precision, res, g):
    x, kernel = res
    _, vjp_x = jax.vjp(lambda z: conv_xla(z, kernel, strides, pads, precision), x)
    (gx,) = vjp_x(g)
    gk = kernel_grad_by_offsets(x, g, kernel.shape[:2], strides, pads, precision)
    return gx, gk.astype(kernel.dtype)


conv_hybrid.defvjp(_conv_hybrid_fwd, _conv_hybrid_bwd)


def choose_conv_impl(
    in_hw: tuple[int, int],
    kernel_size: tuple[int, int],
    strides: tuple[int, int],
    cin: int,
    cout: int,
    platform: str | None = None,
) -> str:
    """Pick the lowering (``"xla"``, ``"patches"`` or ``"hybrid"``) for a shape.

    On accelerators this is always ``"xla"``.  On CPU the rule comes from
    timing batch-32 convs with XLA:CPU (jax 0.10, 2-core AMD EPYC; medians
    of process CPU time, the machine was shared so only large ratios count):

    * an input spatial side ``<= SMALL_SPATIAL`` (4) -> ``"patches"``: the
      native lowering is pathological there (3x3 conv on a 2x2 map,
      512->512: ~800 ms forward and ~800 ms input gradient vs ~9 ms each as
      im2col + matmul; 3x3/2 conv on 4x4, 256->512: input gradient 143 ms
      vs 5 ms);
    * ``kh * kw >= LARGE_KERNEL_AREA`` (25), i.e. the 7x7 stem ->
      ``"patches"`` (forward + kernel gradient at 64x64x3 -> 64: ~90-100 ms
      vs ~108-129 ms native);
    * otherwise (3x3 / 1x1 on maps of 8x8 and larger) -> ``"hybrid"``: the
      native forward and input gradient are as fast as im2col or faster and
      need no 9x-larger buffer, but the native kernel gradient degrades
      with the map size (32x32, 64->64: 543 ms vs 125 ms per-offset
      matmuls; 16x16, 128->128: 115 vs 83 ms; 8x8, 256->256: 68 vs 44 ms).

    ResNet-18 (ImageNet stem, 64x64, batch 32) train step: ~6.3-6.8 s of CPU
    time with ``"xla"`` vs ~0.8-0.95 s with this rule.
    """
    if platform is None:
        platform = jax.default_backend()
    if platform != "cpu":
        return "xla"
    del strides, cin, cout
    if min(in_hw) <= SMALL_SPATIAL or kernel_size[0] * kernel_size[1] >= LARGE_KERNEL_AREA:
        return "patches"
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
      impl: ``"xla"``, ``"patches"`` or ``"auto"`` (see module docstring;
        ``"hybrid"`` is accepted too); the parameter tree is the same for
        every value.
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
        if self.impl not in IMPLS + LOWERINGS:
            raise ValueError(f"impl must be one of {sorted(IMPLS)}, got {self.impl!r}")
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
        if impl == "auto":
            impl = choose_conv_impl(x.shape[1:3], ks, st, cin, self.features)
        fn = {"patches": conv_patches, "hybrid": conv_hybrid, "xla": conv_xla}[impl]
        y = fn(x, kernel, st, pads, precision=self.precision)
        if bias is not None:
            y = y + bias
        return y


# --------------------------------------------------------------------------
# max-pool
# --------------------------------------------------------------------------


# He-normal with fan_out, as torchvision initialises ResNet convolutions.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


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

    ``"xla"`` is ``flax.linen.max_pool``; ``"patches"`` (and ``"hybrid"``)
    is :func:`max_pool`; ``"auto"`` picks via :func:`choose_pool_impl`.
    """
    if impl not in IMPLS + LOWERINGS:
        raise ValueError(f"impl must be one of {sorted(IMPLS)}, got {impl!r}")
    if impl == "auto":
        impl = choose_pool_impl()
    if impl == "xla":
        window = _pair(window_shape, "window_shape")
        st = _pair(strides if strides is not None else 1, "strides")
        pads = normalize_padding(padding, x.shape[1:3], window, st)
        return nn.max_pool(x, window, st, pads)
    return max_pool(x, window_shape, strides, padding)
