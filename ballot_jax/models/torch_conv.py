"""Convolution products computed by PyTorch's CPU kernels (oneDNN), called from inside a jitted step.

XLA:CPU lowers a 2-D convolution to matmuls over patches; on large feature maps that moves far more
memory than a direct convolution (``benchmarks/README.md``, batch 32, each product alone: the 7x7
stem's kernel gradient 16.8 ms under ``auto``'s lowering (14.5 ms at best) vs 2.2 ms with oneDNN;
3x3 64->64 on 16x16 maps 16.8 vs 5.0 ms for the three products).
This module hands single convolution products to PyTorch from inside the step, in one of two ways
that compute the same values (the same ATen calls; tested bit for bit):

* as **compiled XLA FFI targets** (:mod:`.torch_ffi`: three C++ handlers built once per machine),
  the default. JAX caches executables that call them like any others, so a second process
  compiles nothing again.
* as **Python callbacks** (``jax.experimental.buffer_callback``) when the handlers cannot be built
  (no C++ compiler; one logged warning) or ``BALLOT_JAX_TORCH_FFI=0``. JAX never writes an
  executable with a Python callback to its persistent cache: every process compiles such steps again.

Either way PyTorch reads XLA's input buffers in place (no copy) and its result is copied into XLA's
output buffer once, so the rest of the step stays compiled XLA.

* :func:`forward`, :func:`input_grad`, :func:`kernel_grad` — the three products of an NHWC/HWIO
  convolution with explicit ``((lo, hi), (lo, hi))`` padding; each is its own custom call, so an
  unused input gradient (the stem's) is never computed.
* :func:`require` — one clear error when PyTorch is missing or the backend is not the CPU.
* :func:`use_ffi` — which of the two ways this process uses.

PyTorch is optional (``pip install torch``; the CPU wheel suffices). It is imported on first use,
never at import time of ``ballot_jax``. Results agree with XLA's convolution up to float rounding
(``tests/test_torch_conv.py``). The products run on the CPU. A jitted function partitioned over
several devices still computes the right values, but XLA gathers a product's inputs onto one
device (no data parallelism for that layer), so the experiment runner uses ``"auto"`` instead of
``"auto_torch"`` when it splits batches over several devices (:func:`ballot_jax.experiment.build_model`).
On the AVX-512 machine of the fourth session the products ran about 1.8x slower inside a step than
alone (on the AVX2 machine of the sixth, 1.08x, paired in one process; ``benchmarks/README.md``),
so the threshold in :func:`ballot_jax.models.conv.choose_conv_impl` was chosen on whole steps.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

from ballot_jax.models import torch_ffi

Pads = tuple[tuple[int, int], tuple[int, int]]
_DTYPES = ("float32", "bfloat16")


@functools.cache
def _torch() -> Any:
    """The ``torch`` module, or ``None`` when it is not installed."""
    try:
        import torch  # noqa: PLC0415 (optional dependency, imported on first use)
    except ImportError:
        return None
    return torch


def available() -> bool:
    """True when PyTorch can be imported (the ``"torch"`` convolution lowering can run)."""
    return _torch() is not None


def require(platform: str | None = None) -> None:
    """Raise ``ValueError`` (one line: the problem and the fix) unless the ``"torch"`` lowering can
    run here: PyTorch installed and the default backend (or ``platform``) is the CPU."""
    if not available():
        raise ValueError("conv_impl uses the 'torch' lowering, but PyTorch is not installed: "
                         "pip install torch (the CPU wheel is enough), or use conv_impl='auto'")
    platform = platform or jax.default_backend()
    if platform != "cpu":
        raise ValueError(f"the 'torch' convolution lowering runs on CPU only, the backend is {platform!r}: "
                         "use conv_impl='auto' (XLA's convolution on accelerators)")


def _check_dtype(*arrays: jax.Array) -> None:
    for a in arrays:
        if str(a.dtype) not in _DTYPES:
            raise ValueError(f"the 'torch' convolution lowering takes {_DTYPES} arrays, got {a.dtype}: "
                             "use conv_impl='auto' for other dtypes")


def _nchw(buf: Any) -> Any:
    """An XLA NHWC buffer as a torch tensor of logical shape NCHW (channels-last strides, no copy)."""
    return _torch().from_dlpack(buf).permute(0, 3, 1, 2)


def _oihw(buf: Any) -> Any:
    """An XLA HWIO kernel buffer as a torch OIHW tensor (a view, no copy)."""
    return _torch().from_dlpack(buf).permute(3, 2, 0, 1)


def _padded(x: Any, pads: Pads) -> tuple[Any, list[int]]:
    """(input, torch padding): symmetric padding is passed to torch; asymmetric padding is applied
    to the input first (torch's convolutions pad symmetrically)."""
    (top, bottom), (left, right) = pads
    if top == bottom and left == right:
        return x, [top, left]
    return _torch().nn.functional.pad(x, (left, right, top, bottom)), [0, 0]


def _conv_backward(x, k, g, strides, pads, which: tuple[bool, bool]):
    """torch's convolution backward: (input gradient or None, kernel gradient or None)."""
    torch = _torch()
    xt, pad = _padded(_nchw(x), pads)
    gx, gk, _ = torch.ops.aten.convolution_backward(
        _nchw(g), xt, _oihw(k), None, list(strides), pad, [1, 1], False, [0, 0], 1, [which[0], which[1], False])
    return gx, gk


def _forward_callback(ctx, out, x, k, *, strides, pads):
    del ctx
    torch = _torch()
    with torch.no_grad():
        xt, pad = _padded(_nchw(x), pads)
        y = torch.nn.functional.conv2d(xt, _oihw(k), stride=list(strides), padding=pad)
        torch.from_dlpack(out).copy_(y.permute(0, 2, 3, 1))


def _input_grad_callback(ctx, out, x, k, g, *, strides, pads):
    del ctx
    torch = _torch()
    with torch.no_grad():
        gx, _ = _conv_backward(x, k, g, strides, pads, (True, False))
        (top, bottom), (left, right) = pads
        if (top, left) != (bottom, right):  # the input was padded before the convolution: crop back
            gx = gx[:, :, top:gx.shape[2] - bottom, left:gx.shape[3] - right]
        torch.from_dlpack(out).copy_(gx.permute(0, 2, 3, 1))


def _kernel_grad_callback(ctx, out, x, k, g, *, strides, pads):
    del ctx
    torch = _torch()
    with torch.no_grad():
        kh, kw, cin, cout = k.shape
        if (kh, kw) == (1, 1) and pads == ((0, 0), (0, 0)):
            # A 1x1 kernel's gradient is one matmul over the (strided) input positions. Also a
            # workaround: PyTorch 2.13's channels-last kernel gradient of 1x1 stride-2 convolutions
            # was intermittently wrong on an AVX2 CPU (16 of 30 random 4->3-channel cases).
            xs = torch.from_dlpack(x)[:, ::strides[0], ::strides[1], :].reshape(-1, cin)
            torch.from_dlpack(out).view(cin, cout).copy_(xs.T @ torch.from_dlpack(g).reshape(-1, cout))
            return
        _, gk = _conv_backward(x, k, g, strides, pads, (False, True))
        torch.from_dlpack(out).copy_(gk.permute(2, 3, 1, 0))


def use_ffi() -> bool:
    """True when the products run as compiled FFI targets (:mod:`.torch_ffi`), whose executables JAX
    caches; False when they run as Python callbacks (``BALLOT_JAX_TORCH_FFI=0``, or no C++ compiler)."""
    return torch_ffi.ensure_registered()


def _call(product: str, callback, result: jax.ShapeDtypeStruct, strides: tuple[int, int], pads: Pads,
          *args: jax.Array) -> jax.Array:
    """One product: the FFI target of ``product`` when registered, else ``callback`` by buffer_callback."""
    _check_dtype(*args)
    strides = tuple(int(s) for s in strides)
    if use_ffi():
        target = torch_ffi.TARGETS[product][0]
        return jax.ffi.ffi_call(target, result, vmap_method="sequential")(
            *args, strides=np.asarray(strides, np.int64), pads=np.asarray([*pads[0], *pads[1]], np.int64))
    from jax.experimental.buffer_callback import buffer_callback

    return buffer_callback(functools.partial(callback, strides=strides, pads=pads), result,
                           vmap_method="sequential")(*args)


def forward(x: jax.Array, kernel: jax.Array, strides: tuple[int, int], pads: Pads,
            out_shape: tuple[int, ...]) -> jax.Array:
    """``conv(x, kernel)`` (NHWC, HWIO, explicit padding; NHWC ``out_shape``, which the caller knows)
    by ``torch.nn.functional.conv2d``."""
    result = jax.ShapeDtypeStruct(tuple(out_shape), x.dtype)
    return _call("forward", _forward_callback, result, strides, pads, x, kernel)


def input_grad(x: jax.Array, kernel: jax.Array, g: jax.Array, strides: tuple[int, int], pads: Pads) -> jax.Array:
    """Cotangent of ``x`` for the output cotangent ``g``, by torch's convolution backward."""
    result = jax.ShapeDtypeStruct(x.shape, x.dtype)
    return _call("input_grad", _input_grad_callback, result, strides, pads, x, kernel, g)


def kernel_grad(x: jax.Array, kernel: jax.Array, g: jax.Array, strides: tuple[int, int], pads: Pads) -> jax.Array:
    """Cotangent of ``kernel`` for the output cotangent ``g``, by torch's convolution backward (an unpadded
    1x1 kernel: one torch matmul over the strided input positions)."""
    result = jax.ShapeDtypeStruct(kernel.shape, kernel.dtype)
    return _call("kernel_grad", _kernel_grad_callback, result, strides, pads, x, kernel, g)


__all__ = ["available", "require", "use_ffi", "forward", "input_grad", "kernel_grad"]
