"""Token-level cross-entropy with per-token weights, z-loss and label smoothing.

Returns sums (not means) so gradient accumulation and multi-host reductions stay exact:
the caller divides by the summed weights once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array, weights_BxL: jax.Array, *,
                  z_loss: float = 0.0, label_smoothing: float = 0.0) -> dict[str, jax.Array]:
  """Sums of loss, z-loss, weights and correct predictions over weighted tokens.

  z-loss (PaLM/T5X) adds z_loss * logsumexp(logits)^2 to keep the softmax normaliser near 1;
  label smoothing spreads `label_smoothing` mass uniformly over the vocabulary.
  """
  logits = logits_BxLxV.astype(jnp.float32)
  log_z = jax.nn.logsumexp(logits, axis=-1)
  target_logit = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
  nll = log_z - target_logit
  if label_smoothing:
    nll = (1.0 - label_smoothing) * nll + label_smoothing * (log_z - logits.mean(-1))
  z = z_loss * jnp.square(log_z)
  weights = weights_BxL.astype(jnp.float32)
  correct = (jnp.argmax(logits, -1) == targets_BxL).astype(jnp.float32)
  return {"loss": jnp.sum((nll + z) * weights), "z_loss": jnp.sum(z * weights),
          "weights": jnp.sum(weights), "correct": jnp.sum(correct * weights)}
