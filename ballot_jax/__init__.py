"""ballot_jax: fair sparse subnetworks (Ballot, ISSTA 2024) in JAX/Flax."""

__version__ = "0.1.0"
