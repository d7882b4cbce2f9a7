"""GPT-2 <-> Hugging Face: random tiny GPT2LMHeadModels imported with logit parity (scanned and
unscanned, safetensors and PyTorch state_dicts, default and non-default epsilon), exported back
bit-exactly, unsupported variants rejected, and generation with the model's own tokenizer.json."""

import json
import os

import numpy as np
import pytest

import torch  # installed by the test extra: a missing torch must fail, not skip
import transformers

import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

from ml_collections import ConfigDict  # pylint: disable=g-import-not-at-top

from common import convert, trainer  # pylint: disable=g-import-not-at-top
from common.data.pipeline import lm_dataset  # pylint: disable=g-import-not-at-top
from common.data.sources import open_source  # pylint: disable=g-import-not-at-top
from common.vocab.hf import TokenizersVocab  # pylint: disable=g-import-not-at-top
from common.vocab import load_vocab  # pylint: disable=g-import-not-at-top
from gpt_flax.generate import generate_text, generate_tokens  # pylint: disable=g-import-not-at-top
from gpt_flax.model import GPTModel  # pylint: disable=g-import-not-at-top
from flax import nnx  # pylint: disable=g-import-not-at-top

V, L = 96, 16


def _hf_model(vocab_size=V, seed=0, **kw):
  """A random GPT2LMHeadModel; every tensor (norms included) random so no swap goes unseen."""
  torch.manual_seed(seed)
  cfg = transformers.GPT2Config(vocab_size=vocab_size, n_positions=32, n_embd=32, n_layer=2,
                                n_head=4, bos_token_id=vocab_size - 1,
                                eos_token_id=vocab_size - 1, **kw)
  model = transformers.GPT2LMHeadModel(cfg).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.3)
  return model


def _save(model, path, fmt="safetensors"):
  if fmt == "safetensors":
    model.save_pretrained(path)
  else:  # a plain PyTorch state_dict (with the tied lm_head copy) next to config.json
    os.makedirs(path, exist_ok=True)
    model.config.to_json_file(os.path.join(path, "config.json"))
    torch.save(model.state_dict(), os.path.join(path, "pytorch_model.bin"))
  return str(path)


def _inputs():
  """Two rows; the second right-padded (HF attention_mask 0 = our segment id 0)."""
  ids = np.random.default_rng(1).integers(0, V, (2, L))
  mask = np.ones((2, L), np.int32)
  mask[1, 11:] = 0
  return ids, mask


def _rel(ours, ref, mask):
  keep = mask.astype(bool)
  return float(np.abs(np.asarray(ours)[keep] - ref[keep]).max() / np.abs(ref[keep]).max())


def _hf_logits(model, ids, mask):
  with torch.no_grad():
    return model(torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()


def _our_logits(net, ids, mask):
  pos = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
  return net(jnp.asarray(ids), positions_BxL=pos, segment_ids_BxL=jnp.asarray(mask))


@pytest.mark.parametrize("scan,fmt,kw", [
    (True, "safetensors", {}),                              # defaults (layer_norm_epsilon 1e-5)
    (False, "bin", {"layer_norm_epsilon": 1e-2}),           # non-default eps; torch state_dict
    (True, "safetensors", {"n_inner": 48, "reorder_and_upcast_attn": True,
                           "activation_function": "gelu_pytorch_tanh"}),
])
def test_import_parity_and_exact_export(tmp_path, scan, fmt, kw):
  hf = _hf_model(**kw)
  src = _save(hf, tmp_path / "hf", fmt)
  cfg = convert.import_hf(src, str(tmp_path / "wd"), preset="tiny", scan_layers=scan)
  assert cfg.model.scan_layers is scan and cfg.model.d_ff == kw.get("n_inner", 128)
  assert cfg.model.norm_eps == kw.get("layer_norm_epsilon", 1e-5)
  _, _, net = convert.load_network(str(tmp_path / "wd"))
  ids, mask = _inputs()
  ref = _hf_logits(hf, ids, mask)
  rel = _rel(_our_logits(net, ids, mask), ref, mask)
  assert rel <= 1e-4, rel
  print(f"gpt2 {kw or 'defaults'} scan={scan} {fmt}: max rel diff {rel:.2e}")

  out = convert.export_hf(str(tmp_path / "wd"), str(tmp_path / "export"))
  got = load_file(os.path.join(out, "model.safetensors"))
  want = {k: v.numpy() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
  assert sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  back = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
  np.testing.assert_array_equal(_hf_logits(back, ids, mask), ref)


def test_vocab_padding_and_trim(tmp_path):
  hf = _hf_model()
  cfg = convert.import_hf(_save(hf, tmp_path / "hf"), str(tmp_path / "wd"), preset="tiny",
                          vocab_multiple=64)
  assert cfg.model.vocab_size == 128
  _, _, net = convert.load_network(str(tmp_path / "wd"))
  ids, mask = _inputs()
  ours = np.asarray(_our_logits(net, ids, mask))
  assert _rel(ours[..., :V], _hf_logits(hf, ids, mask), mask) <= 1e-4
  np.testing.assert_array_equal(ours[..., V:], 0.0)  # zero rows: never sampled (vocab_size)
  got = load_file(convert.export_hf(str(tmp_path / "wd"), str(tmp_path / "ex"))
                  + "/model.safetensors")
  np.testing.assert_array_equal(got["transformer.wte.weight"],
                                hf.state_dict()["transformer.wte.weight"].numpy())


@pytest.mark.parametrize("kw,match", [
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
    ({"activation_function": "relu"}, "activation_function='relu'"),
    ({"scale_attn_weights": False}, "scale_attn_weights=False"),
])
def test_unsupported_math_is_rejected(tmp_path, kw, match):
  src = _save(_hf_model(**kw), tmp_path / "hf")
  with pytest.raises(ValueError, match=match):
    convert.import_hf(src, str(tmp_path / "wd"), preset="tiny")
  assert not os.path.exists(tmp_path / "wd" / "checkpoints")


def test_untied_lm_head_is_rejected(tmp_path):
  hf = _hf_model()
  src = _save(hf, tmp_path / "hf", "bin")
  sd = torch.load(os.path.join(src, "pytorch_model.bin"))
  sd["lm_head.weight"] = sd["lm_head.weight"] + 1.0
  torch.save(sd, os.path.join(src, "pytorch_model.bin"))
  with pytest.raises(ValueError, match="'lm_head.weight' differs"):
    convert.import_hf(src, str(tmp_path / "wd"), preset="tiny")


def _byte_level_bpe(path):
  """A tiny GPT-2-style byte-level BPE trained here, <|endoftext|> last as in GPT-2."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "gamma", "delta", "flax", "jax", "token", "model", "the", "a"]
  texts = [" ".join(rng.choice(words, 12)) for _ in range(200)]
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
  tok.add_special_tokens(["<|endoftext|>"])
  tok.save(path)
  return tok


def test_imported_gpt2_generates_with_its_own_tokenizer(tmp_path):
  src = tmp_path / "hf"
  os.makedirs(src)
  tok = _byte_level_bpe(str(src / "tokenizer.json"))
  vsize = tok.get_vocab_size()
  eot = tok.token_to_id("<|endoftext|>")
  hf = _hf_model(vocab_size=vsize, seed=3)
  hf.save_pretrained(src)
  convert.import_hf(str(src), str(tmp_path / "wd"), preset="tiny")

  vocab = load_vocab(str(tmp_path / "wd" / "vocab"))
  assert isinstance(vocab, TokenizersVocab) and vocab.vocab_size == vsize
  assert vocab.bos_id == vocab.eos_id == vocab.pad_id == eot
  prompts = ["the flax model", "alpha beta gamma delta jax"]
  assert vocab.decode(vocab.encode(prompts[1])) == prompts[1]

  _, _, net = convert.load_network(str(tmp_path / "wd"))
  graphdef, params = nnx.split(net)
  new = 6
  ours = generate_tokens(graphdef, params, [[eot] + vocab.encode(p) for p in prompts],
                         max_len=32, max_new_tokens=new, eos_id=eot, vocab_size=vsize)
  for p, o in zip(prompts, ours):  # HF greedy, one prompt at a time
    ids = torch.tensor([[eot] + tok.encode(p).ids])
    with torch.no_grad():
      ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                        do_sample=False, eos_token_id=eot, pad_token_id=eot)[0, ids.shape[1]:]
    ref = ref.tolist()
    assert o == ref[:ref.index(eot)] if eot in ref else o == ref
  texts = generate_text(graphdef, params, vocab, prompts, max_len=32, max_new_tokens=new)
  assert texts == [tok.decode(o) for o in ours]

  out = convert.export_hf(str(tmp_path / "wd"), str(tmp_path / "ex"))
  fast = transformers.AutoTokenizer.from_pretrained(out)
  assert fast(prompts[0])["input_ids"] == tok.encode(prompts[0]).ids
  assert fast.eos_token == "<|endoftext|>"

  # Fine-tune: the imported work dir is what init_params_from loads, its tokenizer feeds the
  # grain pipeline, on the 8-device mesh.
  with open(tmp_path / "train.jsonl", "w") as f:
    f.writelines(json.dumps({"text": " ".join(prompts * 3)}) + "\n" for _ in range(16))
  cfg = ConfigDict(json.load(open(tmp_path / "wd" / "config.json")))
  cfg.data.seq_len = 16
  cfg.train.update(batch_size=8, num_steps=2, log_every=1, checkpoint_every=2, eval_every=2,
                   async_checkpoint=False)
  source = open_source(f"jsonl:{tmp_path}/train.jsonl", "train", str(tmp_path))
  result = trainer.train(
      GPTModel(cfg), cfg, str(tmp_path / "ft"), make_eval_iter=None,
      make_train_iter=lambda: iter(lm_dataset(source, vocab, text_field="text", seq_len=16,
                                              batch_size=8, seed=0)),
      init_from=str(tmp_path / "wd"))
  assert result.start_step == 0 and np.isfinite(result.history[-1]["loss"])
