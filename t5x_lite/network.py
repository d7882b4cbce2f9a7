"""T5 encoder-decoder (T5.1.1 by default, T5 1.0 by config) from the `common/` modules.

Pre-LN RMSNorm without bias, no dense biases, gated-GELU (1.1) or ReLU (1.0) feed-forward,
one relative-position-bias table per stack (bidirectional buckets in the encoder, causal in
the decoder) computed once per call and added to every layer's self-attention, a shared
input embedding, and separate output logits (1.1) or logits tied to the embedding scaled by
1/sqrt(d_model) (1.0). Initialisation follows T5X (fan-in variance scaling, embedding std 1).

Attention-logit scaling: T5 trained with Adafactor does not scale logits by 1/sqrt(head_dim);
the factor is folded into the query initialisation (`attn_logit_scaling='folded'`), which
Adafactor's parameter-scaled updates keep equivalent. With Adam the explicit scaling is
needed (`'explicit'`). Decoding runs the decoder one step at a time over a self-attention
KV cache plus cross-attention keys/values computed once from the encoder output.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from common import sharding
from common.attention import LayerCaches, make_mask
from common.layers import Dense, Embed, RMSNorm
from common.relpos import RelativePositionBias
from common.transformer import LayerConfig, LayerStack, TransformerLayer

LOGIT_SCALINGS = ("folded", "explicit")


@dataclasses.dataclass(frozen=True)
class T5Config:
  vocab_size: int
  num_encoder_layers: int
  num_decoder_layers: int
  d_model: int
  num_heads: int
  head_dim: int
  d_ff: int
  activation: str = "gated-gelu"        # T5 1.0: "relu"
  logits_via_embedding: bool = False    # T5 1.0: True (tied, scaled by 1/sqrt(d_model))
  dropout_rate: float = 0.0
  relpos_buckets: int = 32
  relpos_max_distance: int = 128
  norm_eps: float = 1e-6
  attn_logit_scaling: str = "folded"
  dtype: str = "float32"
  scan_layers: bool = True
  remat_policy: str = "none"

  def __post_init__(self):
    if self.attn_logit_scaling not in LOGIT_SCALINGS:
      raise ValueError(f"unknown model.attn_logit_scaling {self.attn_logit_scaling!r}; valid: "
                       f"{list(LOGIT_SCALINGS)}")

  def layer_config(self) -> LayerConfig:
    # Unit-std kernels, rescaled per projection to T5X's fan-in init in `_t5_init`.
    return LayerConfig(
        d_model=self.d_model, num_heads=self.num_heads, head_dim=self.head_dim, d_ff=self.d_ff,
        activation=self.activation, norm="rmsnorm", norm_eps=self.norm_eps, use_bias=False,
        pre_norm=True, dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.dropout_rate, init_std=1.0, out_init_std=1.0,
        scale_attn_logits=self.attn_logit_scaling == "explicit", dtype=self.dtype)


def _scale(p: nnx.Param, factor: float) -> None:
  p[...] = p[...] * factor


def _t5_init(layer: TransformerLayer, cfg: T5Config) -> None:
  """T5X's variance_scaling(1, fan_in) per projection (the query also / sqrt(head_dim) when
  the logit scaling is folded into it)."""
  inner = cfg.num_heads * cfg.head_dim
  fold = cfg.head_dim ** -0.5 if cfg.attn_logit_scaling == "folded" else 1.0
  for attn in (layer.attn, layer.cross_attn):
    if attn is None:
      continue
    _scale(attn.query.kernel, cfg.d_model ** -0.5 * fold)
    _scale(attn.key.kernel, cfg.d_model ** -0.5)
    _scale(attn.value.kernel, cfg.d_model ** -0.5)
    _scale(attn.out.kernel, inner ** -0.5)
  for dense in (layer.mlp.wi, layer.mlp.wi_gate):
    if dense is not None:
      _scale(dense.kernel, cfg.d_model ** -0.5)
  _scale(layer.mlp.wo.kernel, cfg.d_ff ** -0.5)


def _layers(stack: LayerStack) -> list[TransformerLayer]:
  """The stack's layer modules (one module with stacked params when scanned)."""
  return [stack.layers] if stack.scan else list(stack.layers)


class T5(nnx.Module):

  def __init__(self, cfg: T5Config, *, rngs: nnx.Rngs):
    dt = jnp.dtype(cfg.dtype)
    self.cfg = cfg
    self.embed = Embed(cfg.vocab_size, cfg.d_model, rngs=rngs, init_std=1.0, dtype=dt)
    self.dropout = nnx.Dropout(cfg.dropout_rate)
    relpos = lambda bidirectional: RelativePositionBias(
        cfg.num_heads, bidirectional=bidirectional, rngs=rngs, num_buckets=cfg.relpos_buckets,
        max_distance=cfg.relpos_max_distance)
    stack = lambda n, cross: LayerStack(cfg.layer_config(), n, rngs=rngs, scan=cfg.scan_layers,
                                        remat_policy=cfg.remat_policy, cross_attention=cross)
    self.encoder_relpos = relpos(True)
    self.encoder = stack(cfg.num_encoder_layers, False)
    self.encoder_norm = RMSNorm(cfg.d_model, rngs=rngs, eps=cfg.norm_eps, dtype=dt)
    self.decoder_relpos = relpos(False)
    self.decoder = stack(cfg.num_decoder_layers, True)
    self.decoder_norm = RMSNorm(cfg.d_model, rngs=rngs, eps=cfg.norm_eps, dtype=dt)
    self.logits_dense = (None if cfg.logits_via_embedding else
                         Dense(cfg.d_model, cfg.vocab_size, names=("embed", "vocab"), rngs=rngs,
                               use_bias=False, init_std=cfg.d_model ** -0.5, dtype=dt))
    for layer in _layers(self.encoder) + _layers(self.decoder):
      _t5_init(layer, cfg)

  def _dropout(self, x, key):
    return self.dropout(x, deterministic=key is None, rngs=key)

  def encode(self, tokens_BxS: jax.Array, segment_ids_BxS: jax.Array, *,
             dropout_key: jax.Array | None = None) -> jax.Array:
    keys = jax.random.split(dropout_key, 3) if dropout_key is not None else [None] * 3
    x = self._dropout(self.embed(tokens_BxS), keys[0])
    x = sharding.constrain(x, ("batch", "length", "act_embed"))
    idx = jnp.arange(tokens_BxS.shape[1])
    x = self.encoder(x, mask=make_mask(segment_ids_BxS, segment_ids_BxS, causal=False),
                     bias=self.encoder_relpos(idx, idx), dropout_key=keys[1])
    return self._dropout(self.encoder_norm(x), keys[2])

  def _logits(self, y_BxTxD: jax.Array) -> jax.Array:
    if self.logits_dense is None:
      logits = self.embed.attend(y_BxTxD) * self.cfg.d_model ** -0.5
    else:
      logits = self.logits_dense(y_BxTxD).astype(jnp.float32)
    return sharding.constrain(logits, ("batch", "length", "act_vocab"))

  def decode(self, encoded_BxSxD: jax.Array, encoder_segment_ids_BxS: jax.Array,
             tokens_BxT: jax.Array, segment_ids_BxT: jax.Array, *,
             dropout_key: jax.Array | None = None) -> jax.Array:
    """Teacher-forced decoder over whole (packed) target rows -> fp32 logits [B, T, V]."""
    keys = jax.random.split(dropout_key, 3) if dropout_key is not None else [None] * 3
    y = self._dropout(self.embed(tokens_BxT), keys[0])
    y = sharding.constrain(y, ("batch", "length", "act_embed"))
    idx = jnp.arange(tokens_BxT.shape[1])
    y = self.decoder(
        y, mask=make_mask(segment_ids_BxT, segment_ids_BxT, causal=True), causal=True,
        bias=self.decoder_relpos(idx, idx), encoded_BxSxD=encoded_BxSxD,
        cross_mask=make_mask(segment_ids_BxT, encoder_segment_ids_BxS, causal=False),
        dropout_key=keys[1])
    return self._logits(self._dropout(self.decoder_norm(y), keys[2]))

  def __call__(self, encoder_tokens_BxS: jax.Array, decoder_tokens_BxT: jax.Array, *,
               encoder_segment_ids_BxS: jax.Array, decoder_segment_ids_BxT: jax.Array,
               dropout_key: jax.Array | None = None) -> jax.Array:
    keys = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
    encoded = self.encode(encoder_tokens_BxS, encoder_segment_ids_BxS, dropout_key=keys[0])
    return self.decode(encoded, encoder_segment_ids_BxS, decoder_tokens_BxT,
                       decoder_segment_ids_BxT, dropout_key=keys[1])


class IncrementalDecoder:
  """T5's decoder run step by step over a KV cache, for inference.

  The decoder layers are unrolled (`LayerStack.unstacked`: weights sliced once, one cache
  buffer per layer updated in place) and every layer's cross-attention keys/values are
  computed from the encoder output once, here, and passed to `TransformerLayer` as `cross_kv`
  at every step.
  """

  def __init__(self, net: T5, encoded_BxSxD: jax.Array, encoder_segment_ids_BxS: jax.Array):
    self.net = net
    self.layers = net.decoder.unstacked()
    self.cross_kv = tuple(layer.cross_attn.project_kv(encoded_BxSxD) for layer in self.layers)
    self.encoder_segment_ids = encoder_segment_ids_BxS

  def init_cache(self, batch: int, max_len: int) -> LayerCaches:
    c = self.net.cfg
    return LayerCaches.zeros(len(self.layers), batch, max_len, c.num_heads, c.head_dim,
                             jnp.dtype(c.dtype))

  def __call__(self, tokens_BxT: jax.Array, segment_ids_BxT: jax.Array, cache: LayerCaches
               ) -> tuple[jax.Array, LayerCaches]:
    """Appends T tokens at `cache.index`; fp32 logits [B, T, V] for them."""
    net = self.net
    slots, mask = cache.step_mask(segment_ids_BxT)
    t, max_len = tokens_BxT.shape[1], cache.segment_ids.shape[1]
    bias = net.decoder_relpos(cache.index + jnp.arange(t), jnp.arange(max_len))
    cross_mask = make_mask(segment_ids_BxT, self.encoder_segment_ids, causal=False)
    y = net.embed(tokens_BxT)
    kvs = []
    for layer, kv, cross_kv in zip(self.layers, cache.kv, self.cross_kv):
      y, kv = layer(y, mask=mask, bias=bias, cross_kv=cross_kv, cross_mask=cross_mask,
                    cache=kv, cache_index=cache.index)
      kvs.append(kv)
    cache = slots._replace(kv=tuple(kvs), index=cache.index + t)
    return net._logits(net.decoder_norm(y)), cache
