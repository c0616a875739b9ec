"""Tiny ImageNet-200 (64×64; 90,000 / 10,000 / 10,000 train/val/test, 200 classes).

Default (paper scale, for a GPU/TPU), as the paper's prototype: class-wise fairness over the
200 classes, ResNet-50 at full width, 64×64 images with the CIFAR stem, 95% sparsity, SGD lr
0.1, momentum 0.9, weight decay 2e-4, ×0.1 at 40/60/80% of each stage, batch 32, 250 epochs
per stage.

Variants (combine with commas, e.g. ``configs/tinyimagenet.py:cpu,resnet50``):
  classes         groups = classes (the default)
  resnet18 / resnet50 / vgg16   the model
  bench           the cpu model trained to a plateau, epochs by the :bench rule for 90,000
                  training images (:func:`ballot_jax.config.bench_variant`; not measured here)
  cpu             2-core CPU size (:func:`ballot_jax.config.cpu_variant`), all 90,000 training
                  images (they are stored class by class, so a prefix would drop classes), 2 dense
                  + 1 vote + 2 retraining epochs
"""

from ballot_jax import config as config_lib

VARIANTS = {
    "classes": {"groups": "classes"},
    **config_lib.MODEL_VARIANTS,
    "cpu": config_lib.cpu_variant(dense_epochs=2, retrain_epochs=2, **{"ballot.vote_epochs": 1}),
    "bench": config_lib.bench_variant(90_000),
}


def get_config(arg: str | None = None):
    """The Tiny ImageNet config; ``arg`` is a comma-separated list of :data:`VARIANTS`."""
    c = config_lib.base_config()
    c.dataset = "tiny_imagenet"
    c.groups = "classes"
    c.image_size = 64
    c.model = "resnet50"
    c.width = 1.0
    c.stem = "cifar"
    c.dense_epochs = 250
    c.retrain_epochs = 250
    c.batch_size = 32
    c.sparsity = 0.95
    return config_lib.apply_variants(c, arg, VARIANTS, name="tinyimagenet")
