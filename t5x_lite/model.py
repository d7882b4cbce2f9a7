"""T5 model: teacher-forced cross-entropy on T5X feature batches and the FLOP count.

Losses are sums; the trainer divides by the number of real target tokens (T5X's
NUM_REAL_TARGET_TOKENS normalisation). AdamW needs that per-token mean (its learning rate,
epsilon and weight decay assume it); Adafactor's updates are invariant to the loss scale, so
the choice does not matter for it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from common.data.seq2seq import FEATURES
from common.losses import cross_entropy
from t5x_lite.network import T5, T5Config


def attn_logit_scaling(cfg: ConfigDict, checkpoint_scaling: str | None = None) -> str:
  """`model.attn_logit_scaling`, with 'auto' resolved: a fine-tuned checkpoint's own choice,
  else 'folded' for Adafactor (T5) and 'explicit' for AdamW."""
  mode = cfg.model.attn_logit_scaling
  if mode != "auto":
    return mode
  if checkpoint_scaling:
    return checkpoint_scaling
  return "folded" if cfg.optimizer.name == "adafactor" else "explicit"


def network_config(cfg: ConfigDict, checkpoint_scaling: str | None = None) -> T5Config:
  fields = {f.name for f in dataclasses.fields(T5Config)}
  unknown = set(cfg.model.keys()) - fields
  if unknown:
    raise ValueError(f"unknown model fields {sorted(unknown)}; valid: {sorted(fields)}")
  kw = cfg.model.to_dict()
  kw["attn_logit_scaling"] = attn_logit_scaling(cfg, checkpoint_scaling)
  return T5Config(**kw)


class T5Model:
  """Encoder-decoder cross-entropy on `decoder_target_tokens` weighted by `decoder_loss_weights`."""

  name = "t5"
  unit = "target tok"  # the progress line counts target tokens (flops_per_token is per one)

  def __init__(self, cfg: ConfigDict, *, checkpoint_scaling: str | None = None,
               input_len: int | None = None, target_len: int | None = None):
    self.cfg = cfg
    self.net_cfg = network_config(cfg, checkpoint_scaling)
    self.input_len = input_len or cfg.data.max_input_len
    self.target_len = target_len or cfg.data.max_target_len

  def make_network(self, rngs: nnx.Rngs) -> T5:
    return T5(self.net_cfg, rngs=rngs)

  def logits(self, network: T5, batch: dict, *, dropout_key: jax.Array | None = None
             ) -> jax.Array:
    return network(batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                   encoder_segment_ids_BxS=batch["encoder_segment_ids"],
                   decoder_segment_ids_BxT=batch["decoder_segment_ids"], dropout_key=dropout_key)

  def loss(self, network: T5, batch: dict, *, dropout_key: jax.Array | None) -> dict:
    logits = self.logits(network, batch, dropout_key=dropout_key)
    return cross_entropy(logits, batch["decoder_target_tokens"], batch["decoder_loss_weights"],
                         z_loss=self.cfg.loss.z_loss,
                         label_smoothing=self.cfg.loss.label_smoothing)

  def flops_per_token(self) -> float:
    """Training FLOPs per TARGET token of a full row (input_len inputs, target_len targets):
    6 x (encoder params x inputs + decoder params x targets + cross K/V x inputs) + attention
    matmuls 12 x layers x inner x query-length x key-length, all divided by target_len."""
    c = self.net_cfg
    inner = c.num_heads * c.head_dim
    ff = (3 if c.activation.startswith("gated-") else 2) * c.d_model * c.d_ff
    enc = c.num_encoder_layers * (4 * c.d_model * inner + ff)
    dec = c.num_decoder_layers * (6 * c.d_model * inner + ff) + c.d_model * c.vocab_size
    cross_kv = c.num_decoder_layers * 2 * c.d_model * inner
    s, t = self.input_len, self.target_len
    matmuls = 6.0 * ((enc + cross_kv) * s + dec * t)
    attention = 12.0 * inner * (c.num_encoder_layers * s * s
                                + c.num_decoder_layers * (t * t + t * s))
    return (matmuls + attention) / t

  def identity(self) -> dict:
    return {"family": self.name, "model": dataclasses.asdict(self.net_cfg)}

  def batch_shapes(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch of T5X features the pipelines feed (common/data/seq2seq.py `finalize`,
    also behind span corruption), at this model's input / target lengths, as abstract arrays
    for ahead-of-time compilation (common/aot.py)."""
    out = {}
    for name in FEATURES:
      length = self.input_len if name.startswith("encoder_") else self.target_len
      dtype = jnp.float32 if name == "decoder_loss_weights" else jnp.int32
      out[name] = jax.ShapeDtypeStruct((batch_size, length), dtype)
    return out
