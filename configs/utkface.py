"""UTKFace (aligned & cropped faces, 200×200 JPEGs; 18,961 / 2,370 / 2,371 train/val/test).

Default (paper scale, for a GPU/TPU): race classification, class-wise fairness over the five
races (groups = classes), ResNet-18 at full width, 64×64 images with an ImageNet stem, the
paper's SGD recipe (lr 0.1, momentum 0.9, weight decay 2e-4, ×0.1 at 40/60/80% of each stage),
batch 32, 95% sparsity. The epoch counts are our choice (the paper does not give UTKFace's).

Variants (combine with commas, e.g. ``configs/utkface.py:cpu,gender_by_race``):
  race            label race, groups = the races (class-wise; the default)
  gender          label gender, groups = the two genders (class-wise)
  gender_by_race  label gender, groups race (a sensitive attribute, as in Fair Scratch Tickets)
  age_by_race     label age bin (0-19, 20-39, 40-59, 60+), groups race
  resnet18 / resnet50 / vgg16   the model
  bench           the cpu model trained to a plateau (:func:`ballot_jax.config.bench_variant`):
                  24 dense + 2 vote + 16 retraining epochs with augmentation; measured here
  cpu             2-core CPU size (:func:`ballot_jax.config.cpu_variant`): ResNet-18 at width
                  0.25, 32×32 images, 3 dense + 2 vote + 2 retraining epochs, 90% sparsity
"""

from ballot_jax import config as config_lib

VARIANTS = {
    "race": {"label": "race", "groups": "classes"},
    "gender": {"label": "gender", "groups": "classes"},
    "gender_by_race": {"label": "gender", "groups": "race"},
    "age_by_race": {"label": "age_bins", "groups": "race"},
    **config_lib.MODEL_VARIANTS,
    "cpu": config_lib.cpu_variant(),
    "bench": config_lib.bench_variant(18_961),
}


def get_config(arg: str | None = None):
    """The UTKFace config; ``arg`` is a comma-separated list of :data:`VARIANTS`."""
    c = config_lib.base_config()
    c.dataset = "utk_face"
    c.label = "race"
    c.groups = "classes"
    c.image_size = 64
    c.model = "resnet18"
    c.width = 1.0
    c.stem = "imagenet"
    c.dense_epochs = 100
    c.retrain_epochs = 100
    c.batch_size = 32
    c.sparsity = 0.95
    return config_lib.apply_variants(c, arg, VARIANTS, name="utkface")
