"""BERT <-> Hugging Face `BertForMaskedLM` / `BertForPreTraining` / `BertForSequenceClassification`
tensor mapping (see common/hf_files.py).

HF BERT is post-LN with nn.Linear (weight [out, in]); the MLM decoder is tied to the word
embeddings with its own bias (`cls.predictions.bias`), and the transform uses `hidden_act`
like the layers. Ours: `Bert` with `mlm_transform`/`mlm_norm`/`mlm_bias`, `pooler`, `nsp`,
`classifier`. A BertForMaskedLM checkpoint that also carries the pooler and NSP head (as the
original bert-base-* do) imports as a pretraining model with NSP, so nothing is dropped.
"""

from __future__ import annotations

import numpy as np
from ml_collections import ConfigDict

from bert_flax.model import BertClassifierModel, BertPretrainModel
from common.hf_files import Family, Tensors

MLM, PRETRAIN, CLASSIFY = "BertForMaskedLM", "BertForPreTraining", "BertForSequenceClassification"
_ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu",
                "relu": "relu"}
_NSP = ("bert.pooler.dense.weight", "cls.seq_relationship.weight")


def _labels(hf: dict) -> list[str]:
  id2label = hf.get("id2label") or {}
  n = len(id2label) or int(hf.get("num_labels", 2))
  return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(n)]


def config_overrides(hf: dict, t: Tensors) -> dict:
  def require(key: str, ok: bool, want: str) -> None:
    if not ok:
      raise ValueError(f"BERT config.json has {key}={hf.get(key)!r}; only {want} converts "
                       "(this network does not implement it)")
  act = hf.get("hidden_act", "gelu")
  require("hidden_act", act in _ACTIVATIONS, f"one of {sorted(_ACTIVATIONS)}")
  require("position_embedding_type", hf.get("position_embedding_type", "absolute") == "absolute",
          "'absolute'")
  require("is_decoder", not hf.get("is_decoder"), "false")
  require("add_cross_attention", not hf.get("add_cross_attention"), "false")
  require("tie_word_embeddings", hf.get("tie_word_embeddings", True) is True,
          "true (MLM decoder tied to the word embeddings)")
  out = {"model.vocab_size": hf["vocab_size"], "model.num_layers": hf["num_hidden_layers"],
         "model.d_model": hf["hidden_size"], "model.num_heads": hf["num_attention_heads"],
         "model.d_ff": hf["intermediate_size"], "model.max_len": hf["max_position_embeddings"],
         "model.type_vocab_size": hf.get("type_vocab_size", 2),
         "model.norm_eps": hf.get("layer_norm_eps", 1e-12), "model.pre_norm": False,
         "model.activation": _ACTIVATIONS[act]}
  arch = _architecture(hf)
  if arch == CLASSIFY:
    labels = _labels(hf)
    regress = hf.get("problem_type") == "regression" or len(labels) == 1
    out["task"] = "regress" if regress else "classify"
    if not regress:
      if any("," in label for label in labels):
        raise ValueError(f"BERT config.json id2label has a label with a comma: {labels}")
      out["classify.labels"] = ",".join(labels)
  else:
    out["task"] = "pretrain"
    out["pretrain.nsp"] = arch == PRETRAIN or all(n in t for n in _NSP)
  return out


def _architecture(hf: dict) -> str:
  archs = [a for a in hf.get("architectures") or [] if a in (MLM, PRETRAIN, CLASSIFY)]
  return archs[0] if archs else MLM


def make_model(cfg: ConfigDict, arch: str, identity: dict | None):
  if identity is not None:
    task = identity.get("task", "pretrain")
    if task != "pretrain":
      return BertClassifierModel(cfg, identity["model"]["num_labels"])
    return BertPretrainModel(cfg)
  if arch == CLASSIFY:
    n = 1 if cfg.task == "regress" else len(cfg.classify.labels.split(","))
    return BertClassifierModel(cfg, n)
  return BertPretrainModel(cfg)


def architecture_of(identity: dict) -> str | None:
  if identity.get("family") != BertPretrainModel.name:
    return None
  if identity.get("task", "pretrain") != "pretrain":
    return CLASSIFY
  return PRETRAIN if identity["model"].get("nsp_head") else MLM


def _linear(t: Tensors, name: str, d_in: int, out_shape: tuple[int, ...]) -> tuple:
  """nn.Linear [out, in] -> our kernel [in, *out_shape] and bias [*out_shape]."""
  n = int(np.prod(out_shape))
  w = t.take(name + ".weight", (n, d_in)).T.reshape((d_in,) + out_shape)
  return w, t.take(name + ".bias", (n,)).reshape(out_shape)


def _norm(t: Tensors, name: str, d: int) -> tuple:
  return t.take(name + ".weight", (d,)), t.take(name + ".bias", (d,))


def import_tensors(hf: dict, model, t: Tensors) -> dict[str, np.ndarray]:
  m = model.net_cfg
  d, h, f, v = m.d_model, m.num_heads, m.d_ff, hf["vocab_size"]
  hd = d // h
  out = {}

  def put(prefix: str, pair: tuple, names=("kernel", "bias")) -> None:
    out.update({f"{prefix}/{n}": a for n, a in zip(names, pair)})

  e = "bert.embeddings."
  out["embeddings/tokens/embedding"] = t.take(e + "word_embeddings.weight", (v, d))
  out["embeddings/positions/embedding"] = t.take(e + "position_embeddings.weight", (m.max_len, d))
  out["embeddings/types"] = t.take(e + "token_type_embeddings.weight", (m.type_vocab_size, d))
  put("embeddings/norm", _norm(t, e + "LayerNorm", d), ("scale", "bias"))
  for i in range(m.num_layers):
    p, o = f"bert.encoder.layer.{i}.", f"encoder/layers/{i}/"
    for name in ("query", "key", "value"):
      put(o + f"attn/{name}", _linear(t, p + f"attention.self.{name}", d, (h, hd)))
    w, b = _linear(t, p + "attention.output.dense", d, (d,))
    put(o + "attn/out", (w.reshape(h, hd, d), b))
    put(o + "attn_norm", _norm(t, p + "attention.output.LayerNorm", d), ("scale", "bias"))
    put(o + "mlp/wi", _linear(t, p + "intermediate.dense", d, (f,)))
    put(o + "mlp/wo", _linear(t, p + "output.dense", f, (d,)))
    put(o + "mlp_norm", _norm(t, p + "output.LayerNorm", d), ("scale", "bias"))
  if m.mlm_head:
    c = "cls.predictions."
    put("mlm_transform", _linear(t, c + "transform.dense", d, (d,)))
    put("mlm_norm", _norm(t, c + "transform.LayerNorm", d), ("scale", "bias"))
    out["mlm_bias"] = t.take(c + "bias", (v,))
    # PyTorch state_dicts also hold the tied decoder (== word embeddings, bias == cls bias).
    for name, same in ((c + "decoder.weight", out["embeddings/tokens/embedding"]),
                       (c + "decoder.bias", out["mlm_bias"])):
      if name in t and not np.array_equal(t.take(name, same.shape), same):
        raise ValueError(f"tensor '{name}' differs from the tensor it is tied to: an untied MLM "
                         "decoder does not convert (this BERT ties it to the word embeddings)")
  if m.pooler:
    put("pooler", _linear(t, "bert.pooler.dense", d, (d,)))
  if m.nsp_head:
    put("nsp", _linear(t, "cls.seq_relationship", d, (2,)))
  if m.num_labels:
    put("classifier", _linear(t, "classifier", d, (m.num_labels,)))
  return out


def export_tensors(model, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  m = model.net_cfg
  d = m.d_model
  out = {}

  def linear(name: str, prefix: str) -> None:
    k = params[prefix + "/kernel"]
    out[name + ".weight"] = k.reshape(k.shape[0], -1).T
    out[name + ".bias"] = params[prefix + "/bias"].reshape(-1)

  def norm(name: str, prefix: str) -> None:
    out[name + ".weight"], out[name + ".bias"] = params[prefix + "/scale"], params[prefix + "/bias"]

  e = "bert.embeddings."
  out[e + "word_embeddings.weight"] = params["embeddings/tokens/embedding"]
  out[e + "position_embeddings.weight"] = params["embeddings/positions/embedding"]
  out[e + "token_type_embeddings.weight"] = params["embeddings/types"]
  norm(e + "LayerNorm", "embeddings/norm")
  for i in range(m.num_layers):
    p, o = f"bert.encoder.layer.{i}.", f"encoder/layers/{i}/"
    for name in ("query", "key", "value"):
      linear(p + f"attention.self.{name}", o + f"attn/{name}")
    out[p + "attention.output.dense.weight"] = params[o + "attn/out/kernel"].reshape(d, d).T
    out[p + "attention.output.dense.bias"] = params[o + "attn/out/bias"]
    norm(p + "attention.output.LayerNorm", o + "attn_norm")
    linear(p + "intermediate.dense", o + "mlp/wi")
    linear(p + "output.dense", o + "mlp/wo")
    norm(p + "output.LayerNorm", o + "mlp_norm")
  if "mlm_bias" in params:
    linear("cls.predictions.transform.dense", "mlm_transform")
    norm("cls.predictions.transform.LayerNorm", "mlm_norm")
    out["cls.predictions.bias"] = params["mlm_bias"]
  if "pooler/kernel" in params:
    linear("bert.pooler.dense", "pooler")
  if "nsp/kernel" in params:
    linear("cls.seq_relationship", "nsp")
  if "classifier/kernel" in params:
    linear("classifier", "classifier")
  return out


def hf_config(model, source: dict, params: dict[str, np.ndarray], vocab) -> dict:
  m, cfg = model.net_cfg, model.cfg
  if m.pre_norm:
    raise ValueError("a pre-LN BERT (model.pre_norm=True) has no Hugging Face BERT equivalent")
  out = dict(source)
  act = out.get("hidden_act", "gelu")
  if _ACTIVATIONS.get(act) != m.activation:  # keep the source's spelling when it is the same
    act = {v: k for k, v in _ACTIVATIONS.items() if k != "gelu_pytorch_tanh"}.get(m.activation)
    if act is None:
      raise ValueError(f"model.activation={m.activation!r} has no Hugging Face BERT equivalent; "
                       f"valid: {sorted(set(_ACTIVATIONS.values()))}")
  if "classifier/kernel" in params:
    arch = CLASSIFY
    n = params["classifier/kernel"].shape[1]
    labels = cfg.classify.labels.split(",") if cfg.get("classify") and cfg.classify.labels else []
    if len(labels) == n and not source:
      out.update(id2label={str(i): l for i, l in enumerate(labels)},
                 label2id={l: i for i, l in enumerate(labels)})
    out.update(num_labels=n)
    if n == 1:
      out["problem_type"] = "regression"
  else:
    arch = PRETRAIN if "nsp/kernel" in params else MLM
  out.update(architectures=[arch], model_type="bert",
             vocab_size=int(params["embeddings/tokens/embedding"].shape[0]),
             hidden_size=m.d_model, num_hidden_layers=m.num_layers,
             num_attention_heads=m.num_heads, intermediate_size=m.d_ff,
             max_position_embeddings=m.max_len, type_vocab_size=m.type_vocab_size,
             layer_norm_eps=m.norm_eps, hidden_act=act, position_embedding_type="absolute",
             tie_word_embeddings=True)
  if not source:
    out.update(hidden_dropout_prob=m.dropout_rate,
               attention_probs_dropout_prob=m.attention_dropout_rate)
  if vocab is not None:
    out["pad_token_id"] = vocab.pad_id
  return out


FAMILY = Family(
    name="bert", model_type="bert", architectures=(MLM, PRETRAIN, CLASSIFY),
    default_preset="base", config_overrides=config_overrides, make_model=make_model,
    architecture_of=architecture_of, import_tensors=import_tensors,
    export_tensors=export_tensors, hf_config=hf_config,
    # Buffers older checkpoints saved; not weights.
    base_prefix="bert.",
    ignored=(r"bert\.embeddings\.position_ids", r"bert\.embeddings\.token_type_ids"))
