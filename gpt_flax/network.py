"""GPT-2-style decoder network: token + learned positions, pre-LN stack, tied output logits."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from common import sharding
from common.attention import make_mask
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
    (Cached decoding: `gpt_flax.generate.Decoder`, on the same modules.)"""
    keys = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
    x = self.embed(tokens_BxL) + self.pos_embed(positions_BxL)
    x = sharding.constrain(x, ("batch", "length", "act_embed"))
    x = self.dropout(x, deterministic=keys[0] is None, rngs=keys[0])
    mask = make_mask(segment_ids_BxL, segment_ids_BxL, causal=True)
    x = self.layers(x, mask=mask, causal=True, dropout_key=keys[1])
    logits = self.embed.attend(self.final_norm(x))
    return sharding.constrain(logits, ("batch", "length", "act_vocab"))
