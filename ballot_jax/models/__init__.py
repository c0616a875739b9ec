"""Model zoo: a small name -> builder registry of Flax linen classifiers.

Every model maps NHWC float images ``[B, H, W, C]`` (any ``H, W >= 8``) to
float32 logits ``[B, num_classes]`` via ``module.apply(variables, x, train,
mutable=...)``; variables hold ``"params"`` and ``"batch_stats"``.  The first
conv is named ``"stem"``, the classifier ``"head"``, and all conv/dense
weights are leaves named ``"kernel"``.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp

from ballot_jax.models.conv import IMPLS, Conv, check_impl, choose_conv_impl, max_pool, max_pool_impl
from ballot_jax.models.resnet import STEMS, ResNet, ResNet18, ResNet50, check_stem
from ballot_jax.models.small import SmallCNN
from ballot_jax.models.vgg import VGG

Builder = Callable[..., nn.Module]

_REGISTRY: dict[str, Builder] = {}

__all__ = [
    "Conv",
    "IMPLS",
    "ResNet",
    "SmallCNN",
    "STEMS",
    "VGG",
    "choose_conv_impl",
    "create",
    "max_pool",
    "max_pool_impl",
    "names",
    "register",
]


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(*, num_classes, width, stem, dtype,
    conv_impl) -> nn.Module`` under ``name`` (duplicates raise ``ValueError``)."""

    def deco(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return deco


def names() -> list[str]:
    """Sorted names of the registered models."""
    return sorted(_REGISTRY)


def create(
    name: str,
    *,
    num_classes: int,
    width: float = 1.0,
    stem: str = "cifar",
    dtype: Any = jnp.float32,
    conv_impl: str = "xla",
) -> nn.Module:
    """Build the registered model ``name``.

    Args:
      name: one of :func:`names`.
      num_classes: number of logits.
      width: channel multiplier (channels rounded, at least 1).
      stem: ``"cifar"`` (3x3/1 conv, no pool) or ``"imagenet"`` (7x7/2 conv
        + 3x3/2 max-pool); ignored by ``vgg16`` and ``cnn_small``.
      dtype: compute dtype of convs/dense layers (params stay float32;
        logits are float32).
      conv_impl: ``"auto"``, ``"auto_torch"``, ``"xla"``, ``"patches"``,
        ``"hybrid"``, ``"torch"`` or a plan ``"forward/input_grad/kernel_grad"``, see
        :class:`ballot_jax.models.conv.Conv`.

    Raises:
      ValueError: unknown ``name``, ``stem`` or ``conv_impl`` (the message
        lists the valid values).
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {names()}")
    check_stem(stem)
    check_impl(conv_impl)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    return _REGISTRY[name](
        num_classes=num_classes, width=width, stem=stem, dtype=dtype, conv_impl=conv_impl
    )


def _build_kwargs(num_classes: int, width: float, dtype: Any, conv_impl: str) -> dict[str, Any]:
    """Keyword arguments shared by every model class."""
    return dict(num_classes=num_classes, width=width, dtype=dtype, conv_impl=conv_impl)


@register("resnet18")
def _resnet18(
    *, num_classes: int, width: float, stem: str, dtype: Any, conv_impl: str
) -> nn.Module:
    """ResNet-18 (BasicBlock, [2, 2, 2, 2])."""
    return ResNet18(stem=stem, **_build_kwargs(num_classes, width, dtype, conv_impl))


@register("resnet50")
def _resnet50(
    *, num_classes: int, width: float, stem: str, dtype: Any, conv_impl: str
) -> nn.Module:
    """ResNet-50 (Bottleneck, [3, 4, 6, 3], v1.5)."""
    return ResNet50(stem=stem, **_build_kwargs(num_classes, width, dtype, conv_impl))


@register("vgg16")
def _vgg16(*, num_classes: int, width: float, stem: str, dtype: Any, conv_impl: str) -> nn.Module:
    """CIFAR VGG-16 with batch norm (``stem`` ignored)."""
    del stem
    return VGG(**_build_kwargs(num_classes, width, dtype, conv_impl))


@register("cnn_small")
def _cnn_small(
    *, num_classes: int, width: float, stem: str, dtype: Any, conv_impl: str
) -> nn.Module:
    """Tiny 3-conv BN net for tests (``stem`` ignored)."""
    del stem
    return SmallCNN(**_build_kwargs(num_classes, width, dtype, conv_impl))
