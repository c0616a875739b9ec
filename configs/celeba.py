"""CelebA (aligned faces, official partition: 162,770 / 19,867 / 19,962 train/val/test).

Default (paper scale, for a GPU/TPU), as the paper's prototype: gender classification (label
``Male``) with class-wise fairness, images centre-cropped to 178×178 and resized to 128×128,
ResNet-50 at full width with the ImageNet stem, 95% sparsity, the paper's SGD recipe (lr 0.1,
momentum 0.9, weight decay 2e-4, ×0.1 at 40/60/80% of each stage), batch 32. 20 epochs per
stage is our choice (the prototype's 250 would be weeks on CelebA).

Variants (combine with commas, e.g. ``configs/celeba.py:cpu,blond_by_gender``):
  male               label Male, groups = classes (the default)
  smiling_by_gender  label Smiling, groups Male (a sensitive attribute)
  attractive_by_gender  label Attractive, groups Male
  blond_by_gender    label Blond_Hair, groups Male
  resnet18 / resnet50 / vgg16   the model
  bench              the cpu model trained to a plateau, epochs by the :bench rule for 162,770
                     training images (:func:`ballot_jax.config.bench_variant`; not measured here)
  cpu                2-core CPU size (:func:`ballot_jax.config.cpu_variant`) on the first 20,000
                     training and 5,000 validation images (file-name order; the test split whole)
"""

from ballot_jax import config as config_lib

VARIANTS = {
    "male": {"label": "Male", "groups": "classes"},
    "smiling_by_gender": {"label": "Smiling", "groups": "Male"},
    "attractive_by_gender": {"label": "Attractive", "groups": "Male"},
    "blond_by_gender": {"label": "Blond_Hair", "groups": "Male"},
    **config_lib.MODEL_VARIANTS,
    "cpu": config_lib.cpu_variant(train_limit=20_000, val_limit=5_000),
    "bench": config_lib.bench_variant(162_770),
}


def get_config(arg: str | None = None):
    """The CelebA config; ``arg`` is a comma-separated list of :data:`VARIANTS`."""
    c = config_lib.base_config()
    c.dataset = "celeb_a"
    c.label = "Male"
    c.groups = "classes"
    c.image_size = 128
    c.model = "resnet50"
    c.width = 1.0
    c.stem = "imagenet"
    c.dense_epochs = 20
    c.retrain_epochs = 20
    c.batch_size = 32
    c.sparsity = 0.95
    return config_lib.apply_variants(c, arg, VARIANTS, name="celeba")
