"""Pure JAX math of awrsr-jax: attention scores, refinements, losses, metrics.

Nothing here imports Flax, so any JAX model (Linen, NNX, Equinox, plain jax) can
call it.
"""

from awrsr_jax.ops import attention, losses, metrics, refine

__all__ = ["attention", "losses", "metrics", "refine"]
