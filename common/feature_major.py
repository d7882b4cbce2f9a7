"""One-token decoding step of a pre-LN layer stack with activations feature-major ([D, B]).

Why: a decoding step multiplies a handful of rows (the batch) by every weight matrix, so its
time is the time to stream the weights. XLA:CPU streams an [out, in] weight against [in, B]
activations ~1.6x faster than [B, in] activations against an [in, out] weight (16-17 vs ~10
GB/s at B = 8, `benchmarks/matvec_bandwidth.py`). So the weights are transposed (and q/k/v
concatenated into one matrix) once per generate call by `prepare`, and `layer_step` keeps the
activations [D, B] through the layer; only the per-head attention over the KV cache runs
batch-major, on the same `KVCache` buffers ([B, H, max_len, D_head]) the prefill fills.

An alternate kernel, not other math: `layer_step` is `TransformerLayer.__call__` with a cache
(pre-LN, no dropout) on the same parameters, with the same dtypes and accumulation, and equal
outputs (tests/common/test_feature_major.py); `gpt_flax.network.Decoder` picks it on CPU.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from common import sharding
from common.attention import KVCache, attend
from common.layers import ACTIVATIONS, Dense
from common.transformer import TransformerLayer

# Per projection: the [out, in] weight and the [out, 1] bias (None without biases).
StepWeights = dict[str, tuple[jax.Array, jax.Array | None]]


def supports(layer: TransformerLayer) -> bool:
  """Pre-LN self-attention layers (GPT's); others decode through the module itself."""
  return layer.pre_norm and layer.cross_attn is None


def prepare(layer: TransformerLayer, dtype: jnp.dtype) -> StepWeights:
  """Transposed (and q/k/v-fused) weights of `layer`, in the compute dtype, built once before
  a decode loop: per token they would be re-transposed (a copy of every weight)."""
  if not supports(layer):
    raise ValueError("feature-major decoding needs a pre-LN layer without cross-attention")

  def transposed(*denses: Dense) -> tuple[jax.Array, jax.Array | None]:
    w = [d.kernel[...].reshape(math.prod(d.in_shape), -1).T.astype(dtype) for d in denses]
    b = [None if d.bias is None else d.bias[...].reshape(-1, 1).astype(dtype) for d in denses]
    return jnp.concatenate(w), None if b[0] is None else jnp.concatenate(b)

  a, m = layer.attn, layer.mlp
  w = {"qkv": transposed(a.query, a.key, a.value), "out": transposed(a.out),
       "wi": transposed(m.wi), "wo": transposed(m.wo)}
  if m.wi_gate is not None:
    w["wi_gate"] = transposed(m.wi_gate)
  return w


def _proj(w_b: tuple[jax.Array, jax.Array | None], x_KxB: jax.Array,
          dtype: jnp.dtype) -> jax.Array:
  """[N, K] @ [K, B] accumulated in fp32, cast to the compute dtype, plus the bias (`Dense`)."""
  w, b = w_b
  y = jax.lax.dot_general(w, x_KxB.astype(dtype), (((1,), (0,)), ((), ())),
                          preferred_element_type=jnp.float32).astype(dtype)
  return y if b is None else y + b


def layer_step(layer: TransformerLayer, w: StepWeights, x_DxB: jax.Array, *, cache: KVCache,
               cache_index: jax.Array, mask_Bx1x1xL: jax.Array) -> tuple[jax.Array, KVCache]:
  """One decoded token per row through `layer`: returns x [D, B] and the cache with this
  token's keys/values written at `cache_index`."""
  a = layer.attn
  dtype = a.dtype
  num_heads, head_dim = a.query.out_shape
  batch = x_DxB.shape[1]
  h = layer.attn_norm(x_DxB, axis=0)
  qkv_3xHxDxB = _proj(w["qkv"], h, dtype).reshape(3, num_heads, head_dim, batch)
  q, k, v = jnp.transpose(qkv_3xHxDxB, (0, 3, 1, 2))[:, :, :, None]  # 3 x [B, H, 1, Dh]
  cache = cache.write(k, v, cache_index)
  out_BxHx1xD = attend(q, cache.k, cache.v, mask=mask_Bx1x1xL, bias=None, scale=a.scale,
                       dropout=a.dropout, dropout_key=None, dtype=dtype)
  out_HDxB = out_BxHx1xD.reshape(batch, num_heads * head_dim).T
  x_DxB = x_DxB + _proj(w["out"], out_HDxB, dtype)
  x_DxB = sharding.constrain(x_DxB, ("act_embed", "batch"))
  h = layer.mlp_norm(x_DxB, axis=0)
  mlp = layer.mlp
  hidden = ACTIVATIONS[mlp.act](_proj(w["wi"], h, dtype))
  if mlp.wi_gate is not None:
    hidden = hidden * _proj(w["wi_gate"], h, dtype)
  x_DxB = x_DxB + _proj(w["wo"], hidden, dtype)
  return sharding.constrain(x_DxB, ("act_embed", "batch")), cache
