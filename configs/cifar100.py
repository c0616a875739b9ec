"""CIFAR-100 (50,000 training images split 45,000 / 5,000 into train/val; 10,000 test).

Default (paper scale, for a GPU/TPU), as the paper's prototype: the 100 fine classes with
class-wise fairness (groups = classes), ResNet-50 at full width, 32×32 images with the CIFAR
stem, 95% sparsity, SGD lr 0.1, momentum 0.9, weight decay 2e-4, ×0.1 at 40/60/80% of each
stage, batch 32, 250 epochs per stage.

Variants (combine with commas, e.g. ``configs/cifar100.py:cpu,coarse``):
  classes         label = fine class, groups = classes (the default)
  coarse          label = the 20 superclasses, groups = classes
  fine_by_coarse  label = fine class, groups = the 20 superclasses
  resnet18 / resnet50 / vgg16   the model
  bench           the cpu model trained to a plateau, epochs by the :bench rule for 45,000
                  training images (:func:`ballot_jax.config.bench_variant`; not measured here)
  cpu             2-core CPU size (:func:`ballot_jax.config.cpu_variant`) on the first 20,000
                  training images (CIFAR order) and 2,000 validation images (the test set whole)
"""

from ballot_jax import config as config_lib

VARIANTS = {
    "classes": {"label": "label", "groups": "classes"},
    "coarse": {"label": "coarse_label", "groups": "classes"},
    "fine_by_coarse": {"label": "label", "groups": "coarse_label"},
    **config_lib.MODEL_VARIANTS,
    "cpu": config_lib.cpu_variant(train_limit=20_000, val_limit=2_000),
    "bench": config_lib.bench_variant(45_000),
}


def get_config(arg: str | None = None):
    """The CIFAR-100 config; ``arg`` is a comma-separated list of :data:`VARIANTS`."""
    c = config_lib.base_config()
    c.dataset = "cifar100"
    c.label = "label"
    c.groups = "classes"
    c.image_size = 32
    c.model = "resnet50"
    c.width = 1.0
    c.stem = "cifar"
    c.dense_epochs = 250
    c.retrain_epochs = 250
    c.batch_size = 32
    c.sparsity = 0.95
    return config_lib.apply_variants(c, arg, VARIANTS, name="cifar100")
