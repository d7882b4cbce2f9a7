"""GPT-2 <-> Hugging Face `GPT2LMHeadModel` tensor mapping (see common/hf_files.py).

HF GPT-2 uses Conv1D (weight [in, out], i.e. already our kernel layout), one fused c_attn whose
output axis is q | k | v (each head-major: [heads, head_dim]), gelu_new (= our tanh 'gelu'),
a learned position table and an lm_head tied to the token table.
"""

from __future__ import annotations

import numpy as np
from ml_collections import ConfigDict

from common.hf_files import Family, Tensors
from gpt_flax.model import GPTModel

ARCH = "GPT2LMHeadModel"
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")


def config_overrides(hf: dict, t: Tensors) -> dict:
  """HF config.json -> our model fields; anything whose math we do not implement is an error."""
  def require(key: str, ok: bool, want: str) -> None:
    if not ok:
      raise ValueError(f"GPT-2 config.json has {key}={hf.get(key)!r}; only {want} converts "
                       "(this network does not implement it)")
  del t
  require("activation_function", hf.get("activation_function", "gelu_new") in _TANH_GELU,
          f"one of {_TANH_GELU} (tanh-approximate GELU)")
  require("scale_attn_weights", hf.get("scale_attn_weights", True) is True, "true")
  require("scale_attn_by_inverse_layer_idx", not hf.get("scale_attn_by_inverse_layer_idx"),
          "false")
  require("add_cross_attention", not hf.get("add_cross_attention"), "false")
  require("tie_word_embeddings", hf.get("tie_word_embeddings", True) is True, "true (tied lm_head)")
  # reorder_and_upcast_attn only changes where fp16/bf16 upcasts; our attention logits and
  # softmax are always fp32, so the math is the same and it converts.
  d = hf["n_embd"]
  return {"model.vocab_size": hf["vocab_size"], "model.max_len": hf["n_positions"],
          "model.num_layers": hf["n_layer"], "model.d_model": d, "model.num_heads": hf["n_head"],
          "model.d_ff": hf.get("n_inner") or 4 * d,
          "model.norm_eps": hf.get("layer_norm_epsilon", 1e-5)}


def make_model(cfg: ConfigDict, arch: str, identity: dict | None) -> GPTModel:
  del arch, identity  # one architecture, configured by cfg alone
  return GPTModel(cfg)


def architecture_of(identity: dict) -> str | None:
  return ARCH if identity.get("family") == GPTModel.name else None


def import_tensors(hf: dict, model: GPTModel, t: Tensors) -> dict[str, np.ndarray]:
  c = model.net_cfg
  d, h, hd, f, v = c.d_model, c.num_heads, c.head_dim, c.d_ff, hf["vocab_size"]
  out = {"embed/embedding": t.take("transformer.wte.weight", (v, d)),
         "pos_embed/embedding": t.take("transformer.wpe.weight", (c.max_len, d)),
         "final_norm/scale": t.take("transformer.ln_f.weight", (d,)),
         "final_norm/bias": t.take("transformer.ln_f.bias", (d,))}
  if "lm_head.weight" in t:  # PyTorch state_dicts carry the tied copy; it must be the same
    head = t.take("lm_head.weight", (v, d))
    if not np.array_equal(head, out["embed/embedding"]):
      raise ValueError("tensor 'lm_head.weight' differs from 'transformer.wte.weight': an untied "
                       "output layer does not convert (this GPT ties them)")
  for i in range(c.num_layers):
    p, o = f"transformer.h.{i}.", f"layers/layers/{i}/"
    qkv_w = t.take(p + "attn.c_attn.weight", (d, 3 * d))
    qkv_b = t.take(p + "attn.c_attn.bias", (3 * d,))
    for j, name in enumerate(("query", "key", "value")):
      out[o + f"attn/{name}/kernel"] = qkv_w[:, j * d:(j + 1) * d].reshape(d, h, hd)
      out[o + f"attn/{name}/bias"] = qkv_b[j * d:(j + 1) * d].reshape(h, hd)
    out[o + "attn/out/kernel"] = t.take(p + "attn.c_proj.weight", (d, d)).reshape(h, hd, d)
    out[o + "attn/out/bias"] = t.take(p + "attn.c_proj.bias", (d,))
    out[o + "mlp/wi/kernel"] = t.take(p + "mlp.c_fc.weight", (d, f))
    out[o + "mlp/wi/bias"] = t.take(p + "mlp.c_fc.bias", (f,))
    out[o + "mlp/wo/kernel"] = t.take(p + "mlp.c_proj.weight", (f, d))
    out[o + "mlp/wo/bias"] = t.take(p + "mlp.c_proj.bias", (d,))
    for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
      out[o + f"{ours}/scale"] = t.take(p + f"{theirs}.weight", (d,))
      out[o + f"{ours}/bias"] = t.take(p + f"{theirs}.bias", (d,))
  return out


def export_tensors(model: GPTModel, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  c = model.net_cfg
  d = c.d_model
  out = {"transformer.wte.weight": params["embed/embedding"],
         "transformer.wpe.weight": params["pos_embed/embedding"],
         "transformer.ln_f.weight": params["final_norm/scale"],
         "transformer.ln_f.bias": params["final_norm/bias"]}
  for i in range(c.num_layers):
    p, o = f"transformer.h.{i}.", f"layers/layers/{i}/"
    out[p + "attn.c_attn.weight"] = np.concatenate(
        [params[o + f"attn/{n}/kernel"].reshape(d, d) for n in ("query", "key", "value")], 1)
    out[p + "attn.c_attn.bias"] = np.concatenate(
        [params[o + f"attn/{n}/bias"].reshape(d) for n in ("query", "key", "value")])
    out[p + "attn.c_proj.weight"] = params[o + "attn/out/kernel"].reshape(d, d)
    out[p + "attn.c_proj.bias"] = params[o + "attn/out/bias"]
    out[p + "mlp.c_fc.weight"] = params[o + "mlp/wi/kernel"]
    out[p + "mlp.c_fc.bias"] = params[o + "mlp/wi/bias"]
    out[p + "mlp.c_proj.weight"] = params[o + "mlp/wo/kernel"]
    out[p + "mlp.c_proj.bias"] = params[o + "mlp/wo/bias"]
    for ours, theirs in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
      out[p + f"{theirs}.weight"] = params[o + f"{ours}/scale"]
      out[p + f"{theirs}.bias"] = params[o + f"{ours}/bias"]
  return out


def hf_config(model: GPTModel, source: dict, params: dict[str, np.ndarray], vocab) -> dict:
  """The source config.json (if imported) with our shapes; otherwise GPT-2 defaults + ours."""
  c = model.net_cfg
  out = dict(source)
  out.update(architectures=[ARCH], model_type="gpt2",
             vocab_size=int(params["embed/embedding"].shape[0]), n_positions=c.max_len,
             n_layer=c.num_layers, n_embd=c.d_model, n_head=c.num_heads,
             n_inner=None if c.d_ff == 4 * c.d_model else c.d_ff,
             activation_function=out.get("activation_function", "gelu_new"),
             layer_norm_epsilon=c.norm_eps, scale_attn_weights=True,
             scale_attn_by_inverse_layer_idx=False, add_cross_attention=False,
             tie_word_embeddings=True)
  if not source:
    out.update(resid_pdrop=c.dropout_rate, embd_pdrop=c.dropout_rate, attn_pdrop=c.dropout_rate)
  if vocab is not None:
    out.update(bos_token_id=vocab.bos_id, eos_token_id=vocab.eos_id)
  return out


FAMILY = Family(
    name="gpt", model_type="gpt2", architectures=(ARCH,), default_preset="124m",
    config_overrides=config_overrides, make_model=make_model, architecture_of=architecture_of,
    import_tensors=import_tensors, export_tensors=export_tensors, hf_config=hf_config,
    # Causal-mask buffers older checkpoints saved; not weights.
    base_prefix="transformer.",
    ignored=(r"transformer\.h\.\d+\.attn\.(bias|masked_bias)",))
