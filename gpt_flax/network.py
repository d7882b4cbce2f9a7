"""GPT-2-style decoder network: token + learned positions, pre-LN stack, tied output logits;
and the same network run with a KV cache (`Decoder`), for generation."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from common import feature_major, sharding
from common.attention import KVCache, LayerCaches, make_mask
from common.layers import Embed, LayerNorm
from common.transformer import LayerConfig, LayerStack


@dataclasses.dataclass(frozen=True)
class GPTConfig:
  vocab_size: int
  max_len: int
  num_layers: int
  d_model: int
  num_heads: int
  d_ff: int
  dropout_rate: float = 0.0
  norm_eps: float = 1e-5
  dtype: str = "float32"
  scan_layers: bool = True
  remat_policy: str = "none"
  attention_impl: str = "auto"

  def __post_init__(self):
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")

  @property
  def head_dim(self) -> int:
    return self.d_model // self.num_heads

  def layer_config(self) -> LayerConfig:
    return LayerConfig(
        d_model=self.d_model, num_heads=self.num_heads, head_dim=self.head_dim, d_ff=self.d_ff,
        activation="gelu", norm="layernorm", norm_eps=self.norm_eps, use_bias=True, pre_norm=True,
        dropout_rate=self.dropout_rate, attention_dropout_rate=self.dropout_rate, init_std=0.02,
        out_init_std=0.02 / math.sqrt(2 * self.num_layers), dtype=self.dtype,
        attention_impl=self.attention_impl)


class GPT(nnx.Module):

  def __init__(self, cfg: GPTConfig, *, rngs: nnx.Rngs):
    dt = jnp.dtype(cfg.dtype)
    self.cfg = cfg
    self.embed = Embed(cfg.vocab_size, cfg.d_model, rngs=rngs, dtype=dt)
    self.pos_embed = Embed(cfg.max_len, cfg.d_model, rngs=rngs, init_std=0.01, dtype=dt,
                           names=("positions", "embed"))
    self.dropout = nnx.Dropout(cfg.dropout_rate)
    self.layers = LayerStack(cfg.layer_config(), cfg.num_layers, rngs=rngs,
                             scan=cfg.scan_layers, remat_policy=cfg.remat_policy)
    self.final_norm = LayerNorm(cfg.d_model, rngs=rngs, eps=cfg.norm_eps, dtype=dt)

  def __call__(self, tokens_BxL: jax.Array, *, positions_BxL: jax.Array,
               segment_ids_BxL: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
    """fp32 logits [B, L, V]. Packed rows: attention stays within each segment (document).
    (Cached decoding: `Decoder`, on the same modules.)"""
    keys = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
    x = self.embed(tokens_BxL) + self.pos_embed(positions_BxL)
    x = sharding.constrain(x, ("batch", "length", "act_embed"))
    x = self.dropout(x, deterministic=keys[0] is None, rngs=keys[0])
    mask = make_mask(segment_ids_BxL, segment_ids_BxL, causal=True)
    x = self.layers(x, mask=mask, causal=True, dropout_key=keys[1])
    logits = self.embed.attend(self.final_norm(x))
    return sharding.constrain(logits, ("batch", "length", "act_vocab"))


class Decoder:
  """GPT's forward pass with a KV cache, on the network's own modules, layers unrolled.

  Through a scanned stack, XLA would copy every layer's weights and whole KV cache out of the
  stacked arrays at every decoded token (and the cache back in). Here each layer's weights are
  sliced once, before the decode loop, and each layer owns a cache buffer that a step updates
  in place. On CPU, one-token steps run feature-major (`common/feature_major.py`: weights
  transposed once here, activations [D, B]), which XLA:CPU streams ~1.5x faster; elsewhere
  (TPU/GPU choose their own layouts) they run through the modules, without the transposed
  copy of every weight. Returns the logits of the last position only (all decoding reads), so
  a prefill skips the vocabulary projection of the other prompt positions.
  """

  def __init__(self, net: GPT, *, use_feature_major: bool | None = None):
    self.net = net
    self.layers = net.layers.unstacked()
    if use_feature_major is None:
      use_feature_major = jax.default_backend() == "cpu"
    dtype = jnp.dtype(net.cfg.dtype)
    self.step_weights = ([feature_major.prepare(layer, dtype) for layer in self.layers]
                         if use_feature_major else None)

  def init_cache(self, batch: int, max_len: int) -> LayerCaches:
    c = self.net.cfg
    return LayerCaches.zeros(len(self.layers), batch, max_len, c.num_heads, c.head_dim,
                             jnp.dtype(c.dtype))

  def __call__(self, tokens_BxT: jax.Array, positions_BxT: jax.Array,
               segment_ids_BxT: jax.Array, cache: LayerCaches) -> tuple[jax.Array, LayerCaches]:
    """fp32 logits [B, 1, V] of the last position, and the cache with the T tokens added."""
    net = self.net
    x = net.embed(tokens_BxT) + net.pos_embed(positions_BxT)
    slots, mask = cache.step_mask(segment_ids_BxT)
    kvs = []
    caches = [KVCache(*(sharding.constrain(c, ("batch", "act_heads", "kv_length", "kv"))
                        for c in kv)) for kv in cache.kv]
    if tokens_BxT.shape[1] == 1 and self.step_weights is not None:
      x_DxB = sharding.constrain(x[:, 0].T, ("act_embed", "batch"))
      for layer, w, kv in zip(self.layers, self.step_weights, caches):
        x_DxB, kv = feature_major.layer_step(layer, w, x_DxB, cache=kv,
                                             cache_index=cache.index, mask_Bx1x1xL=mask)
        kvs.append(kv)
      h_DxB = net.final_norm(x_DxB, axis=0)
      logits_VxB = jax.lax.dot_general(
          net.embed.embedding[...].astype(net.embed.dtype), h_DxB.astype(net.embed.dtype),
          (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
      # The barrier keeps XLA from folding the transpose into the matmul, which would turn it
      # back into the slow [B, D] x [V, D] form.
      logits = jax.lax.optimization_barrier(logits_VxB).T[:, None]
    else:
      x = sharding.constrain(x, ("batch", "length", "act_embed"))
      for layer, kv in zip(self.layers, caches):
        x, kv = layer(x, mask=mask, cache=kv, cache_index=cache.index)
        kvs.append(kv)
      logits = net.embed.attend(net.final_norm(x[:, -1:]))
    logits = sharding.constrain(logits, ("batch", "length", "act_vocab"))
    return logits, LayerCaches(tuple(kvs), slots.segment_ids,
                               cache.index + tokens_BxT.shape[1])
