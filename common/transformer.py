"""Transformer layer (pre-LN or post-LN, optional cross-attention) and a layer stack.

The stack either scans one layer over stacked parameters (the `layers` logical axis; compile
time independent of depth) or loops over separate layers, and wraps the layer in `jax.checkpoint`
with a configurable remat policy. BERT, T5 and GPT stacks are all this one block, configured.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from common import sharding
from common.attention import KVCache, MultiHeadAttention
from common.layers import MLP, make_norm


@dataclasses.dataclass(frozen=True)
class LayerConfig:
  d_model: int
  num_heads: int
  head_dim: int
  d_ff: int
  activation: str = "gelu"
  norm: str = "layernorm"
  norm_eps: float = 1e-5
  use_bias: bool = True
  pre_norm: bool = True
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  init_std: float = 0.02
  out_init_std: float | None = None  # residual-output projections (GPT-2: 0.02/sqrt(2 n_layers))
  scale_attn_logits: bool = True
  dtype: str = "float32"
  attention_impl: str = "auto"  # common.attention.use_cudnn

  @property
  def jnp_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class TransformerLayer(nnx.Module):

  def __init__(self, cfg: LayerConfig, *, cross_attention: bool = False, rngs: nnx.Rngs):
    dt = cfg.jnp_dtype
    norm = lambda: make_norm(cfg.norm, cfg.d_model, rngs=rngs, eps=cfg.norm_eps,
                             use_bias=cfg.use_bias, dtype=dt)
    attn = lambda: MultiHeadAttention(
        cfg.d_model, cfg.num_heads, cfg.head_dim, rngs=rngs, use_bias=cfg.use_bias,
        init_std=cfg.init_std, out_init_std=cfg.out_init_std,
        dropout_rate=cfg.attention_dropout_rate, scale_logits=cfg.scale_attn_logits, dtype=dt,
        implementation=cfg.attention_impl)
    self.pre_norm = cfg.pre_norm
    self.attn_norm, self.attn = norm(), attn()
    self.cross_norm, self.cross_attn = (norm(), attn()) if cross_attention else (None, None)
    self.mlp_norm = norm()
    self.mlp = MLP(cfg.d_model, cfg.d_ff, activation=cfg.activation, rngs=rngs,
                   use_bias=cfg.use_bias, init_std=cfg.init_std, out_init_std=cfg.out_init_std,
                   dropout_rate=cfg.dropout_rate, dtype=dt)
    self.dropout = nnx.Dropout(cfg.dropout_rate)

  def _residual(self, x, norm, fn, key):
    """x + dropout(fn(norm(x))) (pre-LN) or norm(x + dropout(fn(x))) (post-LN)."""
    y = fn(norm(x) if self.pre_norm else x)
    y = self.dropout(y, deterministic=key is None, rngs=key)
    return x + y if self.pre_norm else norm(x + y)

  def __call__(self, x_BxLxD: jax.Array, *, mask: jax.Array | None, bias: jax.Array | None = None,
               encoded_BxSxD: jax.Array | None = None, cross_mask: jax.Array | None = None,
               cross_kv: KVCache | None = None, cache: KVCache | None = None,
               cache_index: jax.Array | None = None, causal: bool = False,
               dropout_key: jax.Array | None = None) -> tuple[jax.Array, KVCache | None]:
    """`causal`: `mask` is causal (decoder self-attention), which lets attention skip blocks.
    `cross_kv`: the cross-attention keys/values of `encoded_BxSxD` (`MultiHeadAttention.
    project_kv`), computed once so that decoding steps do not recompute them."""
    keys = list(jax.random.split(dropout_key, 7)) if dropout_key is not None else [None] * 7
    new_cache = None

    def self_attn(h):
      nonlocal new_cache
      out, new_cache = self.attn(h, mask=mask, bias=bias, cache=cache, cache_index=cache_index,
                                 causal=causal, dropout_key=keys[0])
      return out

    x = self._residual(x_BxLxD, self.attn_norm, self_attn, keys[1])
    if self.cross_attn is not None:
      cross = lambda h: self.cross_attn(h, encoded_BxSxD, mask=cross_mask, kv=cross_kv,
                                        dropout_key=keys[2])[0]
      x = self._residual(x, self.cross_norm, cross, keys[3])
    x = self._residual(x, self.mlp_norm, lambda h: self.mlp(h, dropout_key=keys[4]), keys[5])
    return sharding.constrain(x, ("batch", "length", "act_embed")), new_cache


class LayerStack(nnx.Module):
  """`num_layers` TransformerLayers, scanned (stacked params, `layers` axis) or looped."""

  def __init__(self, cfg: LayerConfig, num_layers: int, *, rngs: nnx.Rngs, scan: bool = True,
               remat_policy: str = "none", cross_attention: bool = False):
    if remat_policy not in REMAT_POLICIES:
      raise ValueError(f"unknown remat_policy {remat_policy!r}; valid: {sorted(REMAT_POLICIES)}")
    self.num_layers, self.scan, self.remat_policy = num_layers, scan, remat_policy
    make = lambda r: TransformerLayer(cfg, cross_attention=cross_attention, rngs=r)
    if scan:
      @nnx.split_rngs(splits=num_layers)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      def create(r: nnx.Rngs) -> TransformerLayer:
        return make(r)
      self.layers = create(rngs)
    else:
      self.layers = nnx.List([make(rngs) for _ in range(num_layers)])

  def unstacked(self) -> list[TransformerLayer]:
    """One module per layer, its parameters sliced out of the stacked arrays here, once.
    Decoding loops call the layers one by one on per-layer caches (`LayerCaches`): through
    the scan, XLA would copy every layer's weights and KV cache at every decoded token."""
    if not self.scan:
      return list(self.layers)
    graphdef, state = nnx.split(self.layers)
    return [nnx.merge(graphdef, jax.tree.map(operator.itemgetter(i), state))
            for i in range(self.num_layers)]

  def __call__(self, x_BxLxD: jax.Array, *, dropout_key: jax.Array | None = None,
               **kwargs: Any) -> jax.Array:
    """Whole sequences through every layer (training, scoring, encoding); cached decoding runs
    the `unstacked` layers one at a time instead."""
    keys = jax.random.split(dropout_key, self.num_layers) if dropout_key is not None else None
    policy = REMAT_POLICIES[self.remat_policy]

    def run(graphdef, state, x, key):
      def f(state, x, key):
        return nnx.merge(graphdef, state)(x, dropout_key=key, **kwargs)[0]
      if self.remat_policy != "none":
        f = jax.checkpoint(f, policy=policy)
      return f(state, x, key)

    if self.scan:
      graphdef, state = nnx.split(self.layers)
      body = lambda x, xs: (run(graphdef, xs[0], x, xs[1]), None)
      return jax.lax.scan(body, x_BxLxD, (state, keys))[0]

    x = x_BxLxD
    for i, layer in enumerate(self.layers):
      x = run(*nnx.split(layer), x, None if keys is None else keys[i])
    return x
