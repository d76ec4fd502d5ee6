"""awrsr-jax: attention weight refinement for sequential recommendation in JAX."""

__version__ = "0.1.0"
