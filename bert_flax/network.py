"""BERT encoder network: embeddings, bidirectional post-LN (or pre-LN) stack, and task heads.

One module holds the encoder and whichever heads the task uses, so a pretraining checkpoint and
a fine-tuning network share parameter names: fine-tuning loads `embeddings`/`encoder` (and the
`pooler` when NSP trained it) and initialises its new `classifier` head.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from common import sharding
from common.attention import make_mask
from common.layers import ACTIVATIONS, Dense, Embed, LayerNorm, normal_init, param
from common.transformer import LayerConfig, LayerStack


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int
  num_layers: int
  d_model: int
  num_heads: int
  d_ff: int
  max_len: int = 512
  type_vocab_size: int = 2
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  norm_eps: float = 1e-12
  init_std: float = 0.02
  pre_norm: bool = False          # the original BERT is post-LN
  activation: str = "gelu_exact"  # BERT's erf GELU
  dtype: str = "float32"
  scan_layers: bool = True
  remat_policy: str = "none"
  attention_impl: str = "auto"
  # Heads (set by the model from the task, not by users).
  mlm_head: bool = True
  pooler: bool = False
  nsp_head: bool = False
  num_labels: int = 0             # > 0: classification head; 1 = regression

  def __post_init__(self):
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model={self.d_model} is not divisible by num_heads={self.num_heads}")
    if (self.nsp_head or self.num_labels) and not self.pooler:
      raise ValueError("the NSP and classification heads read the pooler; set pooler=True")

  def layer_config(self) -> LayerConfig:
    return LayerConfig(
        d_model=self.d_model, num_heads=self.num_heads, head_dim=self.d_model // self.num_heads,
        d_ff=self.d_ff, activation=self.activation, norm="layernorm", norm_eps=self.norm_eps,
        use_bias=True, pre_norm=self.pre_norm, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate, init_std=self.init_std,
        dtype=self.dtype, attention_impl=self.attention_impl)


class Embeddings(nnx.Module):
  """token + learned position + segment (token type) embeddings -> LayerNorm -> dropout."""

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    dt = jnp.dtype(cfg.dtype)
    self.tokens = Embed(cfg.vocab_size, cfg.d_model, rngs=rngs, init_std=cfg.init_std, dtype=dt)
    self.positions = Embed(cfg.max_len, cfg.d_model, rngs=rngs, init_std=cfg.init_std, dtype=dt,
                           names=("positions", "embed"))
    # Two rows: no logical name needed for the row axis (replicated).
    self.types = param(rngs, normal_init(cfg.init_std), (cfg.type_vocab_size, cfg.d_model),
                       (None, "embed"))
    self.norm = LayerNorm(cfg.d_model, rngs=rngs, eps=cfg.norm_eps, dtype=dt)
    self.dropout = nnx.Dropout(cfg.dropout_rate)
    self.dtype = dt

  def __call__(self, tokens_BxL, type_ids_BxL, positions_BxL, *, dropout_key=None):
    # Gather from a whole table, as `Embed` does (a sharded feature dim would be rematerialised).
    table = sharding.constrain(self.types[...], (None, None))
    types = jnp.take(table, type_ids_BxL, axis=0).astype(self.dtype)
    x = self.tokens(tokens_BxL) + self.positions(positions_BxL) + types
    x = sharding.constrain(self.norm(x), ("batch", "length", "act_embed"))
    return self.dropout(x, deterministic=dropout_key is None, rngs=dropout_key)


class Bert(nnx.Module):

  def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
    dt = jnp.dtype(cfg.dtype)
    self.cfg = cfg
    self.embeddings = Embeddings(cfg, rngs=rngs)
    self.encoder = LayerStack(cfg.layer_config(), cfg.num_layers, rngs=rngs,
                              scan=cfg.scan_layers, remat_policy=cfg.remat_policy)
    # Pre-LN leaves the residual stream unnormalised: one LayerNorm after the stack.
    self.final_norm = (LayerNorm(cfg.d_model, rngs=rngs, eps=cfg.norm_eps, dtype=dt)
                       if cfg.pre_norm else None)
    dense = lambda i, o, names: Dense(i, o, names=names, rngs=rngs, init_std=cfg.init_std,
                                      dtype=dt)
    if cfg.mlm_head:
      self.mlm_transform = dense(cfg.d_model, cfg.d_model, ("embed", "mlp"))
      self.mlm_norm = LayerNorm(cfg.d_model, rngs=rngs, eps=cfg.norm_eps, dtype=dt)
      self.mlm_bias = param(rngs, nnx.initializers.zeros, (cfg.vocab_size,), ("vocab",))
    self.pooler = dense(cfg.d_model, cfg.d_model, ("embed", "mlp")) if cfg.pooler else None
    self.nsp = dense(cfg.d_model, 2, ("mlp", "classes")) if cfg.nsp_head else None
    self.classifier = (dense(cfg.d_model, cfg.num_labels, ("mlp", "classes"))
                       if cfg.num_labels else None)
    self.head_dropout = nnx.Dropout(cfg.dropout_rate)

  def __call__(self, tokens_BxL: jax.Array, *, type_ids_BxL: jax.Array, positions_BxL: jax.Array,
               segment_ids_BxL: jax.Array, dropout_key: jax.Array | None = None) -> jax.Array:
    """Hidden states [B, L, D]. Attention is bidirectional within each non-zero segment id
    (0 = padding; packed rows hold several examples, each attending only to itself)."""
    keys = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
    x = self.embeddings(tokens_BxL, type_ids_BxL, positions_BxL, dropout_key=keys[0])
    mask = make_mask(segment_ids_BxL, segment_ids_BxL, causal=False)
    x = self.encoder(x, mask=mask, dropout_key=keys[1])
    return self.final_norm(x) if self.final_norm is not None else x

  def mlm_logits(self, hidden_BxLxD: jax.Array, positions_BxP: jax.Array) -> jax.Array:
    """fp32 logits [B, P, V] at the P gathered (masked) positions of each row: the output layer
    is tied to the token embedding, plus a per-token bias."""
    h = jnp.take_along_axis(hidden_BxLxD, positions_BxP[..., None], axis=1)
    h = self.mlm_norm(ACTIVATIONS[self.cfg.activation](self.mlm_transform(h)))
    logits = self.embeddings.tokens.attend(h) + self.mlm_bias[...]
    return sharding.constrain(logits, ("batch", "length", "act_vocab"))

  def pooled(self, hidden_BxKxD: jax.Array, *, dropout_key: jax.Array | None = None) -> jax.Array:
    """tanh(dense(h)) of [CLS] states (any leading shape), with dropout for the heads."""
    p = jnp.tanh(self.pooler(hidden_BxKxD))
    return self.head_dropout(p, deterministic=dropout_key is None, rngs=dropout_key)

  def nsp_logits(self, pooled: jax.Array) -> jax.Array:
    return self.nsp(pooled).astype(jnp.float32)

  def classify(self, pooled: jax.Array) -> jax.Array:
    return self.classifier(pooled).astype(jnp.float32)
