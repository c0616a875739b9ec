"""CIFAR-10S (CIFAR-10 with a colour/gray skew per class, Wang et al. CVPR 2020).

Training images of five classes are 95% colour and of the other five 95% gray; the test set
holds every test image twice, in colour and in gray. Default (paper scale, for a GPU/TPU):
groups = the rendering (colour vs gray, the sensitive attribute this dataset is built around),
ResNet-18 at full width, 32×32 images with the CIFAR stem, 95% sparsity, the paper's SGD recipe
(lr 0.1, momentum 0.9, weight decay 2e-4, ×0.1 at 40/60/80% of each stage), batch 32,
250 epochs per stage as in the prototype.

Variants (combine with commas, e.g. ``configs/cifar10s.py:cpu,classes``):
  color             groups = colour / gray (the default)
  classes           groups = the ten classes (the paper's class-wise fairness)
  classes_by_color  20 groups, class × rendering
  resnet18 / resnet50 / vgg16   the model
  bench             the cpu model trained to a plateau, epochs by the :bench rule for 45,000
                    training images (:func:`ballot_jax.config.bench_variant`; not measured here)
  cpu               2-core CPU size (:func:`ballot_jax.config.cpu_variant`) on the first 15,000
                    training images (CIFAR order) and 2,000 validation images (the test set whole)
"""

from ballot_jax import config as config_lib

VARIANTS = {
    "color": {"groups": "color"},
    "classes": {"groups": "classes"},
    "classes_by_color": {"groups": "classes*color"},
    **config_lib.MODEL_VARIANTS,
    "cpu": config_lib.cpu_variant(train_limit=15_000, val_limit=2_000),
    "bench": config_lib.bench_variant(45_000),
}


def get_config(arg: str | None = None):
    """The CIFAR-10S config; ``arg`` is a comma-separated list of :data:`VARIANTS`."""
    c = config_lib.base_config()
    c.dataset = "cifar10_s"
    c.groups = "color"
    c.image_size = 32
    c.model = "resnet18"
    c.width = 1.0
    c.stem = "cifar"
    c.dense_epochs = 250
    c.retrain_epochs = 250
    c.batch_size = 32
    c.sparsity = 0.95
    return config_lib.apply_variants(c, arg, VARIANTS, name="cifar10s")
