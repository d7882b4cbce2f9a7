"""GPT model: the causal-LM objective and FLOP count around the `GPT` network."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from common.losses import cross_entropy
from gpt_flax.network import GPT, GPTConfig


def network_config(model_cfg: ConfigDict) -> GPTConfig:
  fields = {f.name for f in dataclasses.fields(GPTConfig)}
  unknown = set(model_cfg.keys()) - fields
  if unknown:
    raise ValueError(f"unknown model fields {sorted(unknown)}; valid: {sorted(fields)}")
  return GPTConfig(**model_cfg.to_dict())


class GPTModel:
  """Next-token prediction on packed rows (`inputs` -> `targets`, weighted by `weights`)."""

  name = "gpt"
  unit = "tok"

  def __init__(self, cfg: ConfigDict):
    self.cfg = cfg
    self.net_cfg = network_config(cfg.model)

  def make_network(self, rngs: nnx.Rngs) -> GPT:
    return GPT(self.net_cfg, rngs=rngs)

  def logits(self, network: GPT, batch: dict, *, dropout_key: jax.Array | None = None) -> jax.Array:
    return network(batch["inputs"], positions_BxL=batch["positions"],
                   segment_ids_BxL=batch["segment_ids"], dropout_key=dropout_key)

  def loss(self, network: GPT, batch: dict, *, dropout_key: jax.Array | None) -> dict:
    """Summed cross-entropy over the weighted targets; `input_tokens` (every real input token)
    is what tokens/s and MFU count, also when `data.loss_regex` weights only part of a row."""
    logits = self.logits(network, batch, dropout_key=dropout_key)
    sums = cross_entropy(logits, batch["targets"], batch["weights"], z_loss=self.cfg.loss.z_loss,
                         label_smoothing=self.cfg.loss.label_smoothing)
    sums["input_tokens"] = jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32)
    return sums

  def num_params(self, non_embedding: bool = True) -> int:
    """Parameter count from the abstract network (no arrays created)."""
    with nnx.use_eager_sharding(False):
      net = nnx.eval_shape(lambda: self.make_network(nnx.Rngs(0)))
    total = sum(x.size for x in jax.tree.leaves(nnx.state(net, nnx.Param)))
    if non_embedding:
      total -= net.embed.embedding.size + net.pos_embed.embedding.size
    return total

  def flops_per_token(self) -> float:
    """Training FLOPs per token, PaLM's accounting: 6N (N incl. the logit matmul) + 12·L·d·T."""
    c = self.net_cfg
    n = self.num_params() + c.vocab_size * c.d_model
    return 6.0 * n + 12.0 * c.num_layers * c.d_model * self.cfg.data.seq_len

  def identity(self) -> dict:
    return {"family": self.name, "model": dataclasses.asdict(self.net_cfg)}

  def batch_shapes(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch `lm_dataset` feeds (common/data/pipeline.py `_finalize`) as abstract
    arrays: what ahead-of-time compilation (common/aot.py) lowers the steps for, without data."""
    shape = (batch_size, self.cfg.data.seq_len)
    return {k: jax.ShapeDtypeStruct(shape, jnp.float32 if k == "weights" else jnp.int32)
            for k in ("inputs", "targets", "segment_ids", "positions", "weights")}
