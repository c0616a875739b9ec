"""``python -m ballot_jax.data prepare --dataset=NAME --manual_dir=DIR --data_dir=DIR``."""

import sys

from ballot_jax.data.prepare import main

if __name__ == "__main__":
    sys.exit(main())
