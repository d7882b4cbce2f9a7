"""Multi-head attention (self and cross) with masks, additive bias and a KV cache.

Masks are boolean [B, 1, Q, K] (True = may attend), built from segment ids so padding,
packing (no attention across documents) and causality are one mechanism. An additive
bias [B or 1, H, Q, K] is where T5's relative position bias plugs in. Softmax is in fp32.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from common import sharding
from common.layers import Dense

_NEG_INF = -1e10  # finite, so fully masked rows (padding queries) give no NaN
ATTENTION_IMPLS = ("auto", "xla", "cudnn")


def use_cudnn(impl: str, *, dtype: jnp.dtype, head_dim: int, dropout: bool,
              bias: jax.Array | None) -> bool:
  """Whether attention runs as cuDNN's fused flash attention (`jax.nn.dot_product_attention`).

  `auto` picks it when compiling for NVIDIA GPUs and it applies: bf16/fp16, head_dim a
  multiple of 8 up to 128, no attention dropout, no additive bias (T5's relative positions
  keep the XLA path). It never materialises the [B, H, Q, K] logits, which the XLA path does
  in fp32. `xla` never uses it; `cudnn` insists and says why when it cannot.
  """
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"unknown attention_impl {impl!r}; valid: {', '.join(ATTENTION_IMPLS)}")
  if impl == "xla":
    return False
  problems = [why for bad, why in (
      (sharding.target_platform() not in ("gpu", "cuda"), "needs an NVIDIA GPU"),
      (jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16), "needs bfloat16 or float16"),
      (head_dim % 8 or head_dim > 128, "needs head_dim a multiple of 8, at most 128"),
      (dropout, "does not do attention dropout"),
      (bias is not None, "does not take an additive bias here")) if bad]
  if impl == "cudnn" and problems:
    raise ValueError(f"attention_impl='cudnn' {'; '.join(problems)}; use 'auto' or 'xla'")
  return not problems


class KVCache(NamedTuple):
  """Keys/values of all positions decoded so far: [B, H, max_len, D_head].

  Heads-major, the layout attention's batched matmuls read: a decoding step then writes its
  new keys/values into the buffer and reads it as is, where a [B, max_len, H, D] buffer was
  transposed whole, per layer, at every decoded token.
  """
  k: jax.Array
  v: jax.Array

  @classmethod
  def zeros(cls, batch: int, max_len: int, num_heads: int, head_dim: int,
            dtype: jnp.dtype) -> "KVCache":
    shape = (batch, num_heads, max_len, head_dim)
    return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))

  def write(self, k_BxHxTxD: jax.Array, v_BxHxTxD: jax.Array, index: jax.Array) -> "KVCache":
    """The cache with T new positions' keys/values stored from slot `index` on."""
    start = (0, 0, index, 0)
    return KVCache(jax.lax.dynamic_update_slice(self.k, k_BxHxTxD.astype(self.k.dtype), start),
                   jax.lax.dynamic_update_slice(self.v, v_BxHxTxD.astype(self.v.dtype), start))


def make_mask(q_segment_ids: jax.Array, kv_segment_ids: jax.Array, *, causal: bool,
              q_index: jax.Array | None = None, kv_index: jax.Array | None = None) -> jax.Array:
  """[B, 1, Q, K] mask: same non-zero segment, and key index <= query index if causal.

  Segment id 0 marks padding. `q_index`/`kv_index` ([B, Q]/[B, K] or [Q]/[K]) are the
  positions along the sequence buffer used for causality (default: 0..Q-1, 0..K-1); decoding
  with a cache passes the cache offset here.
  """
  mask = (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]) & (
      q_segment_ids[:, :, None] > 0)
  if causal:
    q_index = jnp.arange(q_segment_ids.shape[1]) if q_index is None else q_index
    kv_index = jnp.arange(kv_segment_ids.shape[1]) if kv_index is None else kv_index
    q_index = jnp.broadcast_to(q_index, q_segment_ids.shape)
    kv_index = jnp.broadcast_to(kv_index, kv_segment_ids.shape)
    mask = mask & (kv_index[:, None, :] <= q_index[:, :, None])
  return mask[:, None]


@jax.custom_vjp
def add_shared_bias(logits_BxHxQxK: jax.Array, bias_1xHxQxK: jax.Array) -> jax.Array:
  """`logits + bias` for a bias shared by the batch (T5's relative position bias).

  The bias gradient is the batch sum of the logits' gradient. XLA:CPU runs that reduction over
  a short leading axis of a large array ~50x slower than a matmul with a ones vector (26 ms vs
  0.5 ms for [8, 8, 256, 256]; a quarter second per T5 training step), so the VJP is written
  as that matmul.
  """
  return logits_BxHxQxK + bias_1xHxQxK


def _add_shared_bias_fwd(logits, bias):
  return logits + bias, None


def _add_shared_bias_bwd(_, g_BxHxQxK):
  g_BxN = g_BxHxQxK.reshape(g_BxHxQxK.shape[0], -1)
  g_bias_N = jnp.ones(g_BxN.shape[0], g_BxN.dtype) @ g_BxN
  return g_BxHxQxK, g_bias_N.reshape((1,) + g_BxHxQxK.shape[1:])


add_shared_bias.defvjp(_add_shared_bias_fwd, _add_shared_bias_bwd)


def heads_major_attention(q_BxHxQxD: jax.Array, k_BxHxKxD: jax.Array, v_BxHxKxD: jax.Array,
                          *, mask: jax.Array | None, bias: jax.Array | None, scale: float,
                          dropout: nnx.Dropout, dropout_key: jax.Array | None,
                          dtype: jnp.dtype, causal_blocks: int = 1) -> jax.Array:
  """Softmax attention on [B, H, L, D] operands -> [B, H, Q, D].

  Heads sit next to batch because the batched matmuls want them there (XLA:CPU runs them
  ~10 % faster than when an einsum over [B, L, H, D] leaves the layout to it).
  `causal_blocks` > 1 promises a causal mask over Q == K positions and splits the queries
  into that many blocks, each attending only to the keys up to its end: the masked upper
  triangle is skipped instead of computed and thrown away (exact for every query that may
  attend somewhere; 2 blocks cut a causal layer's attention time ~30 % on CPU).
  """
  n_q = q_BxHxQxD.shape[2]
  if causal_blocks <= 1:
    return attend(q_BxHxQxD, k_BxHxKxD, v_BxHxKxD, mask=mask, bias=bias, scale=scale,
                   dropout=dropout, dropout_key=dropout_key, dtype=dtype)
  if n_q != k_BxHxKxD.shape[2] or n_q % causal_blocks:
    raise ValueError(f"causal_blocks={causal_blocks} needs as many queries as keys and a "
                     f"length divisible by it; got {n_q} queries, {k_BxHxKxD.shape[2]} keys")
  size = n_q // causal_blocks
  outs = []
  for i in range(causal_blocks):
    rows, end = slice(i * size, (i + 1) * size), (i + 1) * size
    outs.append(attend(
        q_BxHxQxD[:, :, rows], k_BxHxKxD[:, :, :end], v_BxHxKxD[:, :, :end],
        mask=None if mask is None else mask[:, :, rows, :end],
        bias=None if bias is None else bias[:, :, rows, :end], scale=scale, dropout=dropout,
        dropout_key=None if dropout_key is None else jax.random.fold_in(dropout_key, i),
        dtype=dtype))
  return jnp.concatenate(outs, axis=2)


def attend(q_BxHxQxD: jax.Array, k_BxHxKxD: jax.Array, v_BxHxKxD: jax.Array, *,
           mask: jax.Array | None, bias: jax.Array | None, scale: float, dropout: nnx.Dropout,
           dropout_key: jax.Array | None, dtype: jnp.dtype) -> jax.Array:
  """Softmax attention of all queries over all keys (`heads_major_attention` without blocks)."""
  logits_BxHxQxK = jnp.einsum("bhqd,bhkd->bhqk", q_BxHxQxD, k_BxHxKxD,
                              preferred_element_type=jnp.float32) * scale
  if bias is not None and bias.shape[0] == 1 and logits_BxHxQxK.shape[0] > 1:
    logits_BxHxQxK = add_shared_bias(logits_BxHxQxK, bias.astype(jnp.float32))
  elif bias is not None:
    logits_BxHxQxK = logits_BxHxQxK + bias.astype(jnp.float32)
  if mask is not None:
    logits_BxHxQxK = jnp.where(mask, logits_BxHxQxK, _NEG_INF)
  probs = jax.nn.softmax(logits_BxHxQxK, axis=-1)
  probs = dropout(probs, deterministic=dropout_key is None, rngs=dropout_key)
  return jnp.einsum("bhqk,bhkd->bhqd", probs.astype(dtype), v_BxHxKxD,
                    preferred_element_type=jnp.float32).astype(dtype)


def causal_attention_blocks(length: int, min_block: int = 128) -> int:
  """Query blocks for causal self-attention: the most blocks of >= `min_block` positions that
  divide `length` (smaller blocks run the matmuls less efficiently than they save)."""
  for n in range(length // min_block, 1, -1):
    if length % n == 0:
      return n
  return 1


class MultiHeadAttention(nnx.Module):
  """Projections q/k/v/o with logical axes (embed, heads, kv); self or cross attention."""

  def __init__(self, d_model: int, num_heads: int, head_dim: int, *, rngs: nnx.Rngs,
               use_bias: bool = True, init_std: float = 0.02, out_init_std: float | None = None,
               dropout_rate: float = 0.0, scale_logits: bool = True,
               dtype: jnp.dtype = jnp.float32, implementation: str = "auto"):
    proj = lambda std: Dense(d_model, (num_heads, head_dim), names=("embed", "heads", "kv"),
                             rngs=rngs, use_bias=use_bias, init_std=std, dtype=dtype)
    self.query, self.key, self.value = proj(init_std), proj(init_std), proj(init_std)
    self.out = Dense((num_heads, head_dim), d_model, names=("heads", "kv", "embed"), rngs=rngs,
                     use_bias=use_bias, init_std=out_init_std or init_std, dtype=dtype)
    self.dropout = nnx.Dropout(dropout_rate)
    self.scale = head_dim ** -0.5 if scale_logits else 1.0
    self.dtype, self.head_dim, self.implementation = dtype, head_dim, implementation

  def _heads(self, dense: Dense, x_BxLxD: jax.Array) -> jax.Array:
    return sharding.constrain(dense(x_BxLxD), ("batch", "length", "act_heads", "kv"))

  def project_kv(self, x_BxKxD: jax.Array) -> KVCache:
    """Heads-major keys/values of `x`, for attention over a fixed sequence computed once and
    passed back as `kv` (T5's decoder steps over its encoder output)."""
    return KVCache(*(jnp.swapaxes(self._heads(d, x_BxKxD), 1, 2) for d in (self.key, self.value)))

  def __call__(self, x_BxQxD: jax.Array, x_kv_BxKxD: jax.Array | None = None, *,
               mask: jax.Array | None = None, bias: jax.Array | None = None,
               cache: KVCache | None = None, cache_index: jax.Array | None = None,
               kv: KVCache | None = None, causal: bool = False,
               dropout_key: jax.Array | None = None) -> tuple[jax.Array, KVCache | None]:
    """With `cache`, the new keys/values are written at `cache_index` and attention runs over
    the whole cache buffer (the caller's mask hides unwritten slots). `kv`: keys/values from
    `project_kv`, used instead of projecting `x_kv_BxKxD`. `causal` says the mask is causal,
    so whole blocks above the diagonal can be skipped (`causal_attention_blocks`)."""
    x_kv = x_BxQxD if x_kv_BxKxD is None else x_kv_BxKxD
    q = self._heads(self.query, x_BxQxD)
    if kv is None:
      k, v = self._heads(self.key, x_kv), self._heads(self.value, x_kv)
      if cache is None and use_cudnn(self.implementation, dtype=self.dtype,
                                     head_dim=self.head_dim, bias=bias,
                                     dropout=dropout_key is not None and self.dropout.rate > 0):
        out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=self.scale,
                                           is_causal=causal, implementation="cudnn")
        return self.out(out), None
      kv = KVCache(jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2))  # [B, H, L, D]
    if cache is not None:
      cache = cache.write(kv.k, kv.v, cache_index)
      kv = cache
    blocks = causal_attention_blocks(q.shape[1]) if causal and cache is None else 1
    out = heads_major_attention(jnp.swapaxes(q, 1, 2), kv.k, kv.v, mask=mask, bias=bias,
                                scale=self.scale, dropout=self.dropout, dropout_key=dropout_key,
                                dtype=self.dtype, causal_blocks=blocks)
    return self.out(jnp.swapaxes(out, 1, 2)), cache


class LayerCaches(NamedTuple):
  """Everything incremental decoding carries between steps for a layer stack decoded layer by
  layer (`LayerStack.unstacked`). One KV buffer per layer, so a step updates each in place
  (slicing one out of a stacked buffer and back copies every layer's whole cache per token);
  `segment_ids` marks which buffer slots hold real tokens (0 = empty or padding, so
  left-padded ragged prompts are simply masked); `index` is the next slot to write."""
  kv: tuple[KVCache, ...]
  segment_ids: jax.Array
  index: jax.Array

  @classmethod
  def zeros(cls, num_layers: int, batch: int, max_len: int, num_heads: int, head_dim: int,
            dtype: jnp.dtype) -> "LayerCaches":
    kv = tuple(KVCache.zeros(batch, max_len, num_heads, head_dim, dtype)
               for _ in range(num_layers))
    return cls(kv, jnp.zeros((batch, max_len), jnp.int32), jnp.zeros((), jnp.int32))

  def step_mask(self, segment_ids_BxT: jax.Array) -> tuple["LayerCaches", jax.Array]:
    """Records the new tokens' segment ids and returns the causal mask over the buffer."""
    seg, mask = _step_mask(self.segment_ids, self.index, segment_ids_BxT)
    return self._replace(segment_ids=seg), mask

  def extend(self, slots: int) -> "LayerCaches":
    """The same cache with `slots` more empty slots at the end. A decoding step attends over
    the whole buffer, so decoding grows it in phases (`decoding.generate`'s `phase_ends`)
    rather than reading a full-length buffer from the first token on."""
    pad = lambda a, axis: jnp.pad(a, [(0, slots if i == axis else 0) for i in range(a.ndim)])
    kv = tuple(KVCache(pad(c.k, 2), pad(c.v, 2)) for c in self.kv)
    return self._replace(kv=kv, segment_ids=pad(self.segment_ids, 1))


def _step_mask(slots_BxL: jax.Array, index: jax.Array, segment_ids_BxT: jax.Array
               ) -> tuple[jax.Array, jax.Array]:
  seg = jax.lax.dynamic_update_slice(slots_BxL, segment_ids_BxT, (0, index))
  q_index = index + jnp.arange(segment_ids_BxT.shape[1])
  return seg, make_mask(segment_ids_BxT, seg, causal=True, q_index=q_index)
