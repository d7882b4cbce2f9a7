"""T5 <-> Hugging Face `T5ForConditionalGeneration` tensor mapping, T5 1.0 and T5.1.1
(see common/hf_files.py).

HF T5 uses nn.Linear without biases (weight [out, in]); q/k/v/o are [heads * d_kv, d_model];
the relative-position table lives in block 0 of each stack; attention logits are not scaled
(our `attn_logit_scaling='folded'`). The output layer is either the shared embedding with the
decoder output scaled by d_model**-0.5 (T5 1.0; transformers 5 calls it
`scale_decoder_outputs`, older configs `tie_word_embeddings`), or a separate `lm_head`
(T5.1.1). Our `logits_via_embedding` is the first; every other combination converts into a
separate `logits_dense` (any output scale folded into its kernel).
"""

from __future__ import annotations

import numpy as np
from ml_collections import ConfigDict

from common.hf_files import Family, Tensors
from t5x_lite.model import T5Model

ARCH = "T5ForConditionalGeneration"
# HF activation names (after gated-gelu -> gelu_new) -> ours.
_ACTIVATIONS = {"relu": "relu", "gelu": "gelu_exact", "gelu_new": "gelu",
                "gelu_pytorch_tanh": "gelu"}


def _activation(hf: dict) -> str:
  proj = hf.get("feed_forward_proj", "relu")
  gated = proj.startswith("gated-")
  act = "gelu_new" if proj == "gated-gelu" else proj.removeprefix("gated-")
  if act not in _ACTIVATIONS:
    raise ValueError(f"T5 config.json has feed_forward_proj={proj!r}; only "
                     f"{sorted(_ACTIVATIONS)} (optionally 'gated-') convert (this network does "
                     "not implement it)")
  return ("gated-" if gated else "") + _ACTIVATIONS[act]


def _scaled_output(hf: dict) -> bool:
  """Decoder output * d_model**-0.5 before the output layer (T5 1.0)."""
  if "scale_decoder_outputs" in hf:
    return bool(hf["scale_decoder_outputs"])
  return hf.get("tie_word_embeddings", True) is not False


def _tied_output(hf: dict, t: Tensors) -> bool:
  """The output layer is the shared embedding: lm_head absent or an equal copy."""
  a = t.arrays
  return "lm_head.weight" not in a or (
      "shared.weight" in a and np.array_equal(a["lm_head.weight"], a["shared.weight"]))


def config_overrides(hf: dict, t: Tensors) -> dict:
  if not hf.get("is_encoder_decoder", True) or hf.get("is_decoder"):
    raise ValueError("T5 config.json is not an encoder-decoder (is_encoder_decoder/is_decoder); "
                     f"only {ARCH} converts")
  return {"model.vocab_size": hf["vocab_size"], "model.num_encoder_layers": hf["num_layers"],
          "model.num_decoder_layers": hf.get("num_decoder_layers") or hf["num_layers"],
          "model.d_model": hf["d_model"], "model.num_heads": hf["num_heads"],
          "model.head_dim": hf["d_kv"], "model.d_ff": hf["d_ff"],
          "model.activation": _activation(hf),
          "model.logits_via_embedding": _scaled_output(hf) and _tied_output(hf, t),
          "model.relpos_buckets": hf.get("relative_attention_num_buckets", 32),
          "model.relpos_max_distance": hf.get("relative_attention_max_distance", 128),
          "model.norm_eps": hf.get("layer_norm_epsilon", 1e-6),
          "model.attn_logit_scaling": "folded"}  # HF T5 never scales attention logits


def make_model(cfg: ConfigDict, arch: str, identity: dict | None) -> T5Model:
  del arch
  scaling = identity["model"]["attn_logit_scaling"] if identity else None
  return T5Model(cfg, checkpoint_scaling=scaling)


def architecture_of(identity: dict) -> str | None:
  return ARCH if identity.get("family") == T5Model.name else None


def import_tensors(hf: dict, model: T5Model, t: Tensors) -> dict[str, np.ndarray]:
  c = model.net_cfg
  d, h, hd, f, v = c.d_model, c.num_heads, c.head_dim, c.d_ff, hf["vocab_size"]
  inner = h * hd
  out = {"embed/embedding": t.take("shared.weight", (v, d))}
  # PyTorch state_dicts carry the tied copies; they must be the same tensor.
  for name in ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
    if name in t and not np.array_equal(t.take(name, (v, d)), out["embed/embedding"]):
      raise ValueError(f"tensor '{name}' differs from 'shared.weight': separate encoder/decoder "
                       "embeddings do not convert (this T5 shares one)")
  scale = d ** -0.5 if _scaled_output(hf) else 1.0
  if c.logits_via_embedding:
    if "lm_head.weight" in t:
      t.take("lm_head.weight", (v, d))  # the tied copy (checked equal in config_overrides)
  else:
    head = t.take("lm_head.weight", (v, d)) if "lm_head.weight" in t else out["embed/embedding"]
    out["logits_dense/kernel"] = head.T * np.float32(scale) if scale != 1.0 else head.T

  def attention(name: str, ours: str) -> None:
    for x in ("q", "k", "v"):
      w = t.take(f"{name}.{x}.weight", (inner, d))
      out[f"{ours}/{dict(q='query', k='key', v='value')[x]}/kernel"] = w.T.reshape(d, h, hd)
    out[f"{ours}/out/kernel"] = t.take(f"{name}.o.weight", (d, inner)).T.reshape(h, hd, d)

  def mlp(name: str, ours: str) -> None:
    if c.activation.startswith("gated-"):
      out[f"{ours}/wi/kernel"] = t.take(f"{name}.wi_0.weight", (f, d)).T
      out[f"{ours}/wi_gate/kernel"] = t.take(f"{name}.wi_1.weight", (f, d)).T
    else:
      out[f"{ours}/wi/kernel"] = t.take(f"{name}.wi.weight", (f, d)).T
    out[f"{ours}/wo/kernel"] = t.take(f"{name}.wo.weight", (d, f)).T

  for stack, n in (("encoder", c.num_encoder_layers), ("decoder", c.num_decoder_layers)):
    out[f"{stack}_relpos/embedding"] = t.take(
        f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        (c.relpos_buckets, h))
    out[f"{stack}_norm/scale"] = t.take(f"{stack}.final_layer_norm.weight", (d,))
    for i in range(n):
      p, o = f"{stack}.block.{i}.layer.", f"{stack}/layers/{i}/"
      attention(p + "0.SelfAttention", o + "attn")
      out[o + "attn_norm/scale"] = t.take(p + "0.layer_norm.weight", (d,))
      ff = 1
      if stack == "decoder":
        attention(p + "1.EncDecAttention", o + "cross_attn")
        out[o + "cross_norm/scale"] = t.take(p + "1.layer_norm.weight", (d,))
        ff = 2
      mlp(p + f"{ff}.DenseReluDense", o + "mlp")
      out[o + "mlp_norm/scale"] = t.take(p + f"{ff}.layer_norm.weight", (d,))
  return out


def export_tensors(model: T5Model, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  c = model.net_cfg
  d, inner = c.d_model, c.num_heads * c.head_dim
  # HF T5 does not scale logits: an explicitly scaled model folds 1/sqrt(head_dim) into q.
  q_scale = c.head_dim ** -0.5 if c.attn_logit_scaling == "explicit" else 1.0
  out = {"shared.weight": params["embed/embedding"]}
  if not c.logits_via_embedding:
    out["lm_head.weight"] = params["logits_dense/kernel"].T

  def attention(name: str, ours: str) -> None:
    for x, n in (("q", "query"), ("k", "key"), ("v", "value")):
      w = params[f"{ours}/{n}/kernel"].reshape(d, inner).T
      out[f"{name}.{x}.weight"] = w * np.float32(q_scale) if x == "q" and q_scale != 1.0 else w
    out[f"{name}.o.weight"] = params[f"{ours}/out/kernel"].reshape(inner, d).T

  def mlp(name: str, ours: str) -> None:
    if c.activation.startswith("gated-"):
      out[f"{name}.wi_0.weight"] = params[f"{ours}/wi/kernel"].T
      out[f"{name}.wi_1.weight"] = params[f"{ours}/wi_gate/kernel"].T
    else:
      out[f"{name}.wi.weight"] = params[f"{ours}/wi/kernel"].T
    out[f"{name}.wo.weight"] = params[f"{ours}/wo/kernel"].T

  for stack, n in (("encoder", c.num_encoder_layers), ("decoder", c.num_decoder_layers)):
    out[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = params[
        f"{stack}_relpos/embedding"]
    out[f"{stack}.final_layer_norm.weight"] = params[f"{stack}_norm/scale"]
    for i in range(n):
      p, o = f"{stack}.block.{i}.layer.", f"{stack}/layers/{i}/"
      attention(p + "0.SelfAttention", o + "attn")
      out[p + "0.layer_norm.weight"] = params[o + "attn_norm/scale"]
      ff = 1
      if stack == "decoder":
        attention(p + "1.EncDecAttention", o + "cross_attn")
        out[p + "1.layer_norm.weight"] = params[o + "cross_norm/scale"]
        ff = 2
      mlp(p + f"{ff}.DenseReluDense", o + "mlp")
      out[p + f"{ff}.layer_norm.weight"] = params[o + "mlp_norm/scale"]
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def hf_config(model: T5Model, source: dict, params: dict[str, np.ndarray], vocab) -> dict:
  c = model.net_cfg
  out = dict(source)
  proj = out.get("feed_forward_proj")
  if proj is None or _activation(out) != c.activation:  # keep the source's equivalent spelling
    proj = {"relu": "relu", "gated-relu": "gated-relu", "gelu_exact": "gelu",
            "gelu": "gelu_new", "gated-gelu": "gated-gelu"}.get(c.activation)
  if proj is None:
    raise ValueError(f"model.activation={c.activation!r} has no Hugging Face T5 equivalent")
  out.update(architectures=[ARCH], model_type="t5",
             vocab_size=int(params["embed/embedding"].shape[0]), d_model=c.d_model,
             d_kv=c.head_dim, d_ff=c.d_ff, num_layers=c.num_encoder_layers,
             num_decoder_layers=c.num_decoder_layers, num_heads=c.num_heads,
             relative_attention_num_buckets=c.relpos_buckets,
             relative_attention_max_distance=c.relpos_max_distance,
             layer_norm_epsilon=c.norm_eps, feed_forward_proj=proj, is_encoder_decoder=True,
             # Both spellings: transformers 5 reads scale_decoder_outputs, 4.x the tie flag.
             tie_word_embeddings=c.logits_via_embedding,
             scale_decoder_outputs=c.logits_via_embedding)
  out.pop("dense_act_fn", None)
  out.pop("is_gated_act", None)
  if not source:
    out["dropout_rate"] = c.dropout_rate
  if vocab is not None:
    out.update(pad_token_id=vocab.pad_id, eos_token_id=vocab.eos_id,
               decoder_start_token_id=vocab.pad_id)
  return out


FAMILY = Family(
    name="t5", model_type="t5", architectures=(ARCH,), default_preset="base",
    config_overrides=config_overrides, make_model=make_model, architecture_of=architecture_of,
    import_tensors=import_tensors, export_tensors=export_tensors, hf_config=hf_config,
    sp_tokenizer_class="T5Tokenizer")
