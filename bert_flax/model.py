"""BERT models: masked-LM pretraining (+ optional NSP) and sequence classification/regression
around the `Bert` network."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx
from ml_collections import ConfigDict

from bert_flax.network import Bert, BertConfig
from common.losses import cross_entropy

TASKS = ("pretrain", "classify", "regress")
_HEAD_FIELDS = ("mlm_head", "pooler", "nsp_head", "num_labels")


def network_config(model_cfg: ConfigDict, **heads) -> BertConfig:
  fields = {f.name for f in dataclasses.fields(BertConfig)} - set(_HEAD_FIELDS)
  unknown = set(model_cfg.keys()) - fields
  if unknown:
    raise ValueError(f"unknown model fields {sorted(unknown)}; valid: {sorted(fields)}")
  return BertConfig(**model_cfg.to_dict(), **heads)


def _split(key: jax.Array | None, n: int) -> list[jax.Array | None]:
  return list(jax.random.split(key, n)) if key is not None else [None] * n


class _BertBase:
  name = "bert"
  unit = "tok"
  # Identity fields a fine-tuned model may change from its pretrained encoder's.
  head_fields = ("mlm_head", "pooler", "nsp_head", "num_labels")
  net_cfg: BertConfig
  cfg: ConfigDict

  def make_network(self, rngs: nnx.Rngs) -> Bert:
    return Bert(self.net_cfg, rngs=rngs)

  def encode(self, network: Bert, batch: dict, key: jax.Array | None) -> jax.Array:
    return network(batch["tokens"], type_ids_BxL=batch["type_ids"],
                   positions_BxL=batch["positions"], segment_ids_BxL=batch["segment_ids"],
                   dropout_key=key)

  def num_params(self) -> dict[str, int]:
    """Parameter counts per top-level module, from the abstract network (no arrays)."""
    with nnx.use_eager_sharding(False):
      net = nnx.eval_shape(lambda: self.make_network(nnx.Rngs(0)))
    params = nnx.to_pure_dict(nnx.state(net, nnx.Param))
    return {k: sum(x.size for x in jax.tree.leaves(v)) for k, v in params.items()}

  def _encoder_flops_per_token(self, seq_len: int) -> float:
    """Training FLOPs per input token of the encoder: 6N (N without the embedding tables, whose
    lookups cost nothing) + 12 L d T for attention."""
    c = self.net_cfg
    n = self.num_params()
    body = n["encoder"] + n["embeddings"] - sum(
        c.d_model * rows for rows in (c.vocab_size, c.max_len, c.type_vocab_size))
    return 6.0 * body + 12.0 * c.num_layers * c.d_model * seq_len

  def identity(self) -> dict:
    return {"family": self.name, "task": self.cfg.task, "model": dataclasses.asdict(self.net_cfg)}


class BertPretrainModel(_BertBase):
  """Masked LM on packed rows (+ next-sentence prediction when `pretrain.nsp`).

  Losses are per-batch means (MLM over the selected positions, NSP over examples) scaled by
  the batch's real-token count, and `weights` is that count: the trainer's normalisation
  then yields the per-batch means, while its tokens/s and MFU count input tokens.
  """

  def __init__(self, cfg: ConfigDict):
    self.cfg = cfg
    nsp = bool(cfg.pretrain.nsp)
    self.net_cfg = network_config(cfg.model, mlm_head=True, pooler=nsp, nsp_head=nsp)

  def loss(self, network: Bert, batch: dict, *, dropout_key: jax.Array | None) -> dict:
    k_enc, k_head = _split(dropout_key, 2)
    hidden = self.encode(network, batch, k_enc)
    tokens = jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32)
    mlm = cross_entropy(network.mlm_logits(hidden, batch["mlm_positions"]),
                        batch["mlm_targets"], batch["mlm_weights"])
    scale = tokens / jnp.maximum(mlm["weights"], 1.0)
    out = {"loss": mlm["loss"] * scale, "mlm_loss": mlm["loss"] * scale,
           "correct": mlm["correct"] * scale, "predicted": mlm["weights"], "weights": tokens}
    if self.net_cfg.nsp_head:
      # Pooled at every position; only the [CLS] positions carry weight.
      nsp = cross_entropy(network.nsp_logits(network.pooled(hidden, dropout_key=k_head)),
                          batch["nsp_labels"], batch["nsp_weights"])
      nsp_scale = tokens / jnp.maximum(nsp["weights"], 1.0)
      out["loss"] = out["loss"] + nsp["loss"] * nsp_scale
      out["nsp_loss"] = nsp["loss"] * nsp_scale
      out["nsp_accuracy"] = nsp["correct"] * nsp_scale
    return out

  def flops_per_token(self) -> float:
    """Per input token: encoder, plus the MLM head at the gathered positions only."""
    c = self.net_cfg
    frac = self.cfg.pretrain.max_predictions / self.cfg.data.seq_len
    head = (c.d_model * c.d_model + c.d_model * c.vocab_size) * frac
    if c.nsp_head:
      head += c.d_model * c.d_model  # pooler at every position
    return self._encoder_flops_per_token(self.cfg.data.seq_len) + 6.0 * head

  def batch_shapes(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch `pretrain_dataset` feeds (bert_flax/data.py `_finalize`, masking's
    `mask_sequence`) as abstract arrays, for ahead-of-time compilation (common/aot.py)."""
    rows = (batch_size, self.cfg.data.seq_len)
    preds = (batch_size, self.cfg.pretrain.max_predictions)
    out = {k: jax.ShapeDtypeStruct(rows, jnp.int32)
           for k in ("tokens", "type_ids", "positions", "segment_ids")}
    out |= {"mlm_positions": jax.ShapeDtypeStruct(preds, jnp.int32),
            "mlm_targets": jax.ShapeDtypeStruct(preds, jnp.int32),
            "mlm_weights": jax.ShapeDtypeStruct(preds, jnp.float32)}
    if self.net_cfg.nsp_head:
      out |= {"nsp_labels": jax.ShapeDtypeStruct(rows, jnp.int32),
              "nsp_weights": jax.ShapeDtypeStruct(rows, jnp.float32)}
    return out


class BertClassifierModel(_BertBase):
  """[CLS] -> pooler -> dropout -> dense: cross-entropy over `num_labels` classes, or squared
  error when `num_labels` is 1 (regression; `correct` then counts predictions within 0.5 of the
  target). `weights` counts examples, so the trainer's "tokens" are examples and
  `flops_per_token` is per example."""

  unit = "ex"

  def __init__(self, cfg: ConfigDict, num_labels: int):
    if num_labels < 1:
      raise ValueError(f"num_labels={num_labels} must be >= 1 (1 = regression)")
    self.cfg = cfg
    self.num_labels = num_labels
    self.net_cfg = network_config(cfg.model, mlm_head=False, pooler=True, num_labels=num_labels)

  def logits(self, network: Bert, batch: dict, *, dropout_key: jax.Array | None = None
             ) -> jax.Array:
    k_enc, k_head = _split(dropout_key, 2)
    hidden = self.encode(network, batch, k_enc)
    return network.classify(network.pooled(hidden[:, 0], dropout_key=k_head))

  def loss(self, network: Bert, batch: dict, *, dropout_key: jax.Array | None) -> dict:
    logits = self.logits(network, batch, dropout_key=dropout_key)
    w, labels = batch["weights"][:, 0].astype(jnp.float32), batch["labels"][:, 0]
    if self.num_labels == 1:
      err = logits[:, 0] - labels.astype(jnp.float32)
      sq = jnp.sum(w * jnp.square(err))
      return {"loss": sq, "abs_error": jnp.sum(w * jnp.abs(err)),
              "correct": jnp.sum(w * (jnp.abs(err) < 0.5)), "weights": jnp.sum(w)}
    out = cross_entropy(logits[:, None], labels[:, None], w[:, None])
    out.pop("z_loss")
    if self.num_labels == 2:
      pred, label = jnp.argmax(logits, -1) == 1, labels == 1
      out["true_pos"] = jnp.sum(w * (pred & label))
      out["false_pos"] = jnp.sum(w * (pred & ~label))
      out["false_neg"] = jnp.sum(w * (~pred & label))
    return out

  def flops_per_token(self) -> float:
    """Per example (the unit of `weights`): seq_len tokens through the encoder, plus heads."""
    c = self.net_cfg
    seq = self.cfg.data.seq_len
    return seq * self._encoder_flops_per_token(seq) + 6.0 * (c.d_model * c.d_model
                                                              + c.d_model * c.num_labels)

  def batch_shapes(self, batch_size: int) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch `classification_dataset` feeds (common/data/classification.py) as
    abstract arrays, for ahead-of-time compilation (common/aot.py); float labels regress."""
    rows, one = (batch_size, self.cfg.data.seq_len), (batch_size, 1)
    out = {k: jax.ShapeDtypeStruct(rows, jnp.int32)
           for k in ("tokens", "type_ids", "positions", "segment_ids")}
    label_dtype = jnp.float32 if self.num_labels == 1 else jnp.int32
    return out | {"labels": jax.ShapeDtypeStruct(one, label_dtype),
                  "weights": jax.ShapeDtypeStruct(one, jnp.float32)}
