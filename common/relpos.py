"""T5's relative position bias: a learned scalar per (bucket, head) added to attention logits.

Relative distances are bucketed: half the buckets are exact offsets, the rest grow
logarithmically up to `max_distance` (beyond it everything shares the last bucket).
Bidirectional buckets (encoder) give half the buckets to each direction; causal buckets
(decoder) only describe keys at or before the query. The bias is computed once per stack
and passed as the additive `bias` to every layer (the table is shared by the stack's layers).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from common.layers import param


def relative_position_bucket(relative_position: jax.Array, *, bidirectional: bool,
                             num_buckets: int = 32, max_distance: int = 128) -> jax.Array:
  """Bucket of `key_position - query_position` (int array of any shape), as in T5.

  Matches mesh_tensorflow / T5X `_relative_position_bucket`: small distances get their own
  bucket, larger ones log-spaced buckets; with `bidirectional` the upper half of the buckets
  is for keys after the query.
  """
  n = -relative_position.astype(jnp.int32)
  ret = jnp.zeros_like(n)
  if bidirectional:
    num_buckets //= 2
    ret = ret + (n < 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(n)
  else:
    n = jnp.maximum(n, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # float32 log of n (n >= max_exact where used; max() avoids log(0) in the unused branch).
  large = max_exact + (jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
                       / math.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return ret + jnp.where(is_small, n, large)


class RelativePositionBias(nnx.Module):
  """Learned [buckets, heads] table -> additive attention bias [1, H, Q, K]."""

  def __init__(self, num_heads: int, *, bidirectional: bool, rngs: nnx.Rngs,
               num_buckets: int = 32, max_distance: int = 128):
    # T5X: variance_scaling(1.0, 'fan_avg', 'uniform') over the table.
    init = nnx.initializers.variance_scaling(1.0, "fan_avg", "uniform")
    self.embedding = param(rngs, init, (num_buckets, num_heads), ("relpos_buckets", "heads"))
    self.bidirectional, self.num_buckets, self.max_distance = (bidirectional, num_buckets,
                                                               max_distance)

  def __call__(self, q_index: jax.Array, kv_index: jax.Array) -> jax.Array:
    """Bias for query positions `q_index` [Q] and key positions `kv_index` [K] (fp32).

    Positions index the sequence buffer (0..L-1, or the cache offset when decoding); packed
    rows need no per-segment positions because attention across segments is masked anyway.
    """
    buckets_QxK = relative_position_bucket(kv_index[None, :] - q_index[:, None],
                                           bidirectional=self.bidirectional,
                                           num_buckets=self.num_buckets,
                                           max_distance=self.max_distance)
    values_QxKxH = jnp.take(self.embedding[...], buckets_QxK, axis=0)
    return jnp.transpose(values_QxKxH, (2, 0, 1))[None]
