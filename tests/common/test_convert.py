"""Converter machinery on hand-written GPT-2 directories (numpy + safetensors, no torch): bad
input gives one clear error naming the tensor or file, bf16 and sharded safetensors read, the
imported checkpoint loads onto a sharded mesh, the command line, and the tokenizers backend."""

import json
import os
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from common import convert, train_state
from common.checkpoint_reader import load_params
from common.vocab.hf import TokenizersVocab
from common.vocab import load_vocab
from common.partitioning import Partitioner
from gpt_flax.model import GPTModel

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
D, F, V, P, N = 16, 64, 50, 16, 2


def _config(**kw):
  return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": V,
          "n_positions": P, "n_embd": D, "n_layer": N, "n_head": 2, **kw}


def _weights(seed=0):
  rng = np.random.default_rng(seed)
  shapes = {"transformer.wte.weight": (V, D), "transformer.wpe.weight": (P, D),
            "transformer.ln_f.weight": (D,), "transformer.ln_f.bias": (D,)}
  for i in range(N):
    p = f"transformer.h.{i}."
    shapes.update({p + "ln_1.weight": (D,), p + "ln_1.bias": (D,), p + "ln_2.weight": (D,),
                   p + "ln_2.bias": (D,), p + "attn.c_attn.weight": (D, 3 * D),
                   p + "attn.c_attn.bias": (3 * D,), p + "attn.c_proj.weight": (D, D),
                   p + "attn.c_proj.bias": (D,), p + "mlp.c_fc.weight": (D, F),
                   p + "mlp.c_fc.bias": (F,), p + "mlp.c_proj.weight": (F, D),
                   p + "mlp.c_proj.bias": (D,)})
  return {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}


def _hf_dir(path, config=None, weights=None):
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config or _config(), f)
  save_file(weights if weights is not None else _weights(),
            os.path.join(path, "model.safetensors"))
  return str(path)


def _import(src, wd):
  return convert.import_hf(src, str(wd), preset="tiny")


def test_not_a_model_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere not found"):
    _import(str(tmp_path / "nowhere"), tmp_path / "wd")
  os.makedirs(tmp_path / "empty")
  with pytest.raises(ValueError, match="not a Hugging Face model directory: it has no config"):
    _import(str(tmp_path / "empty"), tmp_path / "wd")
  with open(tmp_path / "empty" / "config.json", "w") as f:
    json.dump(_config(), f)
  with pytest.raises(ValueError, match="has no weights: expected model.safetensors"):
    _import(str(tmp_path / "empty"), tmp_path / "wd")


def test_unsupported_architecture(tmp_path):
  src = _hf_dir(tmp_path / "hf", {"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
  with pytest.raises(ValueError, match=r"'llama' model with architectures \['LlamaForCausalLM'\]"
                                       r"; supported: .*GPT2LMHeadModel.*T5ForConditional"):
    _import(src, tmp_path / "wd")


def test_config_shapes_must_match_the_weights(tmp_path):
  src = _hf_dir(tmp_path / "hf", _config(n_inner=32))
  with pytest.raises(ValueError, match=r"tensor 'transformer.h.0.mlp.c_fc.weight' has shape "
                                       r"\(16, 64\) but config.json implies \(16, 32\)"):
    _import(src, tmp_path / "wd")


def test_missing_weight_is_named(tmp_path):
  w = _weights()
  del w["transformer.h.1.ln_2.bias"]
  src = _hf_dir(tmp_path / "hf", weights=w)
  with pytest.raises(ValueError, match="has no tensor 'transformer.h.1.ln_2.bias'"):
    _import(src, tmp_path / "wd")
  assert not os.path.exists(tmp_path / "wd" / "checkpoints")


def test_unexpected_weight_is_named(tmp_path):
  w = _weights()
  w["transformer.h.2.ln_1.weight"] = np.ones(D, np.float32)  # a third layer config.json lacks
  w["transformer.h.0.attn.bias"] = np.ones((1, 1, P, P), np.float32)  # an old buffer: ignored
  src = _hf_dir(tmp_path / "hf", weights=w)
  with pytest.raises(ValueError, match="does not have: transformer.h.2.ln_1.weight$"):
    _import(src, tmp_path / "wd")


def test_bare_body_checkpoint(tmp_path):
  """The hub's gpt2 is saved from GPT2Model: no 'transformer.' prefix, causal-mask buffers."""
  w = {k.removeprefix("transformer."): v for k, v in _weights().items()}
  w.update({f"h.{i}.attn.bias": np.ones((1, 1, P, P), np.float32) for i in range(N)})
  _import(_hf_dir(tmp_path / "hf", weights=w), tmp_path / "wd")
  _, _, _, _, params, _ = convert.load_workdir(str(tmp_path / "wd"))
  np.testing.assert_array_equal(params["pos_embed"]["embedding"], w["wpe.weight"])


def _write_bf16_safetensors(path, arrays):
  """safetensors.numpy cannot write bf16; the format is a JSON header + raw bytes."""
  header, blobs, offset = {}, [], 0
  for k, a in arrays.items():
    b = a.astype(ml_dtypes.bfloat16).tobytes()
    header[k] = {"dtype": "BF16", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
    blobs.append(b)
    offset += len(b)
  h = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))


def test_sharded_bf16_safetensors_and_sharded_mesh_load(tmp_path):
  src = tmp_path / "hf"
  os.makedirs(src)
  w = _weights()
  names = sorted(w)
  shards = {"model-00001-of-00002.safetensors": names[:20],
            "model-00002-of-00002.safetensors": names[20:]}
  for file, keys in shards.items():
    _write_bf16_safetensors(src / file, {k: w[k] for k in keys})
  with open(src / "model.safetensors.index.json", "w") as f:
    json.dump({"weight_map": {k: file for file, keys in shards.items() for k in keys}}, f)
  with open(src / "config.json", "w") as f:
    json.dump(_config(), f)
  cfg = _import(str(src), tmp_path / "wd")
  # What fine-tuning and inference do: strict params-only load onto a sharded 2x2x2 partitioner.
  setup = train_state.make_setup(GPTModel(cfg), cfg, Partitioner(2, 2, 2))
  params, step, meta, _ = load_params(str(tmp_path / "wd"), setup.abstract_state["params"],
                                      setup.state_shardings["params"])
  assert step == 0 and meta["identity"] == GPTModel(cfg).identity()
  wte = w["transformer.wte.weight"].astype(ml_dtypes.bfloat16).astype(np.float32)
  np.testing.assert_array_equal(jax.device_get(params["embed"]["embedding"]), wte)
  c_fc = w["transformer.h.1.mlp.c_fc.weight"].astype(ml_dtypes.bfloat16).astype(np.float32)
  wi = params["layers"]["layers"]["mlp"]["wi"]["kernel"]
  np.testing.assert_array_equal(jax.device_get(wi)[1], c_fc)


def test_import_refuses_a_used_workdir(tmp_path):
  src = _hf_dir(tmp_path / "hf")
  _import(src, tmp_path / "wd")
  with pytest.raises(ValueError, match="already holds checkpoints; use a new --workdir"):
    _import(src, tmp_path / "wd")


def test_export_of_a_non_workdir(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json not found.*is not a run directory"):
    convert.export_hf(str(tmp_path), str(tmp_path / "out"))


def _run(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  return subprocess.run([sys.executable, "-m", "common.convert", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_command_line(tmp_path):
  src = _hf_dir(tmp_path / "hf")
  r = _run(f"--hf_dir={src}", f"--workdir={tmp_path / 'wd'}", "--preset=tiny",
           "--scan_layers=false", "--vocab_multiple=64")
  assert r.returncode == 0, r.stderr
  assert "configs/gpt.py:tiny" in r.stdout and "--config.model.vocab_size=64" in r.stdout
  assert "--config.model.scan_layers=False" in r.stdout
  out = convert.export_hf(str(tmp_path / "wd"), str(tmp_path / "ex"))
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["vocab_size"] == V  # the padding is trimmed again
  r = _run(f"--hf_dir={tmp_path / 'nothing'}", f"--workdir={tmp_path / 'wd2'}")
  assert r.returncode == 2 and r.stderr.strip().endswith("nothing not found"), r.stderr


# --------------------------------------------------------------------------- tokenizers backend


def _word_level(path, specials):
  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab = {t: i for i, t in enumerate(specials + ["hello", "world"])}
  tok = Tokenizer(models.WordLevel(vocab, unk_token=specials[0] if specials else None))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.add_special_tokens(specials)
  tok.save(str(path))
  return str(path)


def test_tokenizers_vocab_roles_and_errors(tmp_path):
  path = _word_level(tmp_path / "tokenizer.json", ["<unk>", "<s>", "</s>", "<pad>"])
  sentinels = _word_level(tmp_path / "t5.json", ["<unk>", "</s>", "<extra_id_0>", "<extra_id_1>"])
  t5 = TokenizersVocab(sentinels)
  assert (t5.extra_ids, t5.sentinel_id(1)) == (2, 3)
  v = TokenizersVocab(path)
  assert (v.unk_id, v.bos_id, v.eos_id, v.pad_id) == (0, 1, 2, 3)
  assert v.encode("hello world") == [4, 5] and v.encode_batch(["world"]) == [[5]]
  assert v.decode([1, 4, 3, 5, 2, 4]) == "hello world"  # bos skipped, pad dropped, stops at eos
  assert v.piece_to_id("world") == 5
  with pytest.raises(ValueError, match="'nope' is not in the vocabulary"):
    v.piece_to_id("nope")
  with pytest.raises(ValueError, match="has no mask token"):
    v.mask_id
  with pytest.raises(ValueError, match="sentinel <extra_id_0> does not exist"):
    v.sentinel_id(0)
  assert v.extra_ids == 0
  with pytest.raises(ValueError, match="token id 9 is outside the vocabulary"):
    v.decode([9])
  # Roles named explicitly (as tokenizer_config.json does) win, and survive save + load_vocab.
  v = TokenizersVocab(path, {"eos": "<s>"})
  v.save_to(str(tmp_path / "saved"))
  again = load_vocab(str(tmp_path / "saved"))
  assert isinstance(again, TokenizersVocab) and again.eos_id == 1
  assert load_vocab(str(tmp_path / "saved" / "tokenizer.json")).eos_id == 1
  with pytest.raises(ValueError, match="special token 'nope' \\(eos\\) is not in tokenizer"):
    TokenizersVocab(path, {"eos": "nope"})


def test_tokenizers_vocab_without_an_end_token(tmp_path):
  path = _word_level(tmp_path / "tokenizer.json", [])
  with pytest.raises(ValueError, match=r"has no token for \['pad', 'eos', 'unk', 'bos'\]"):
    TokenizersVocab(path)
  with open(tmp_path / "bad.json", "w") as f:
    f.write("{}")
  with pytest.raises(ValueError, match="is not a Hugging Face tokenizer.json"):
    TokenizersVocab(str(tmp_path / "bad.json"))
