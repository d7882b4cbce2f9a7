"""BERT <-> Hugging Face: random tiny BertForMaskedLM / BertForPreTraining /
BertForSequenceClassification imported with logit parity under a padding mask (scanned and
unscanned), exported back bit-exactly, unsupported variants rejected, WordPiece tokenizer.json
carried along."""

import os

import numpy as np
import pytest

import torch  # installed by the test extra: a missing torch must fail, not skip
import transformers

import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

from common import convert  # pylint: disable=g-import-not-at-top
from common.vocab.hf import TokenizersVocab  # pylint: disable=g-import-not-at-top
from common.vocab import load_vocab  # pylint: disable=g-import-not-at-top

V, L = 90, 12


def _hf_model(cls, seed=0, **kw):
  """A random HF BERT; every tensor (norms and biases included) random so no swap goes unseen."""
  torch.manual_seed(seed)
  cfg = transformers.BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=4, intermediate_size=64,
                                max_position_embeddings=24, type_vocab_size=3, **kw)
  model = cls(cfg).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.3)
  return model


def _inputs():
  """Two rows with random token types; the second padded after 8 tokens."""
  rng = np.random.default_rng(1)
  ids = rng.integers(0, V, (2, L))
  types = rng.integers(0, 3, (2, L))
  mask = np.ones((2, L), np.int32)
  mask[1, 8:] = 0
  return ids, types, mask


def _batch(ids, types, mask):
  return {"tokens": jnp.asarray(ids), "type_ids": jnp.asarray(types),
          "positions": jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape),
          "segment_ids": jnp.asarray(mask)}


def _rel(ours, ref):
  return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


def _check_export(hf, workdir, out):
  got = load_file(os.path.join(convert.export_hf(workdir, out), "model.safetensors"))
  hf.save_pretrained(out + "_hf")
  want = load_file(os.path.join(out + "_hf", "model.safetensors"))
  assert sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  return out


@pytest.mark.parametrize("cls,scan,kw", [
    ("BertForMaskedLM", True, {}),
    ("BertForPreTraining", False, {"hidden_act": "gelu_new", "layer_norm_eps": 1e-5}),
])
def test_mlm_parity_with_padding_and_exact_export(tmp_path, cls, scan, kw):
  hf = _hf_model(getattr(transformers, cls), **kw)
  hf.save_pretrained(tmp_path / "hf")
  wd = str(tmp_path / "wd")
  cfg = convert.import_hf(str(tmp_path / "hf"), wd, preset="tiny", scan_layers=scan)
  assert cfg.task == "pretrain" and cfg.pretrain.nsp == (cls == "BertForPreTraining")
  cfg, model, net = convert.load_network(wd)
  ids, types, mask = _inputs()
  with torch.no_grad():
    out = hf(torch.tensor(ids), token_type_ids=torch.tensor(types),
             attention_mask=torch.tensor(mask))
  batch = _batch(ids, types, mask)
  hidden = model.encode(net, batch, None)
  logits = net.mlm_logits(hidden, batch["positions"])
  keep = mask.astype(bool)  # HF also computes padded positions; they are not outputs
  ref = (out.logits if cls == "BertForMaskedLM" else out.prediction_logits).numpy()
  rel = _rel(np.asarray(logits)[keep], ref[keep])
  assert rel <= 1e-4, rel
  print(f"bert {cls} {kw or 'defaults'} scan={scan}: max rel diff {rel:.2e}")
  if cls == "BertForPreTraining":
    nsp = net.nsp_logits(net.pooled(hidden[:, 0]))
    assert _rel(nsp, out.seq_relationship_logits.numpy()) <= 1e-4

  ex = _check_export(hf, wd, str(tmp_path / "export"))
  back = getattr(transformers, cls).from_pretrained(ex).eval()
  with torch.no_grad():
    again = back(torch.tensor(ids), token_type_ids=torch.tensor(types),
                 attention_mask=torch.tensor(mask))
  np.testing.assert_array_equal(again[0].numpy(), out[0].numpy())


@pytest.mark.parametrize("num_labels", [3, 1])
def test_sequence_classification_parity(tmp_path, num_labels):
  kw = {"num_labels": num_labels}
  if num_labels == 3:
    kw["id2label"] = {0: "neg", 1: "neutral", 2: "pos"}
  hf = _hf_model(transformers.BertForSequenceClassification, seed=2, **kw)
  hf.save_pretrained(tmp_path / "hf")
  wd = str(tmp_path / "wd")
  cfg = convert.import_hf(str(tmp_path / "hf"), wd, preset="tiny")
  if num_labels == 3:
    assert cfg.task == "classify" and cfg.classify.labels == "neg,neutral,pos"
  else:
    assert cfg.task == "regress"
  _, model, net = convert.load_network(wd)
  ids, types, mask = _inputs()
  with torch.no_grad():
    ref = hf(torch.tensor(ids), token_type_ids=torch.tensor(types),
             attention_mask=torch.tensor(mask)).logits.numpy()
  rel = _rel(model.logits(net, _batch(ids, types, mask)), ref)
  assert rel <= 1e-4, rel
  print(f"bert classifier num_labels={num_labels}: max rel diff {rel:.2e}")
  _check_export(hf, wd, str(tmp_path / "export"))


def test_unsupported_config_is_rejected(tmp_path):
  hf = _hf_model(transformers.BertForMaskedLM, hidden_act="silu")
  hf.save_pretrained(tmp_path / "hf")
  with pytest.raises(ValueError, match="hidden_act='silu'"):
    convert.import_hf(str(tmp_path / "hf"), str(tmp_path / "wd"), preset="tiny")


def test_wordpiece_tokenizer_travels(tmp_path):
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
  tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.decoder = decoders.WordPiece()
  words = ["Alpha", "beta", "gamma", "delta", "flax", "jax", "token", "model", "the", "a"]
  rng = np.random.default_rng(0)
  tok.train_from_iterator(
      [" ".join(rng.choice(words, 10)) for _ in range(100)],
      trainers.WordPieceTrainer(vocab_size=V, show_progress=False,
                                special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
  hf = _hf_model(transformers.BertForMaskedLM)
  hf.config.vocab_size = tok.get_vocab_size()
  hf.resize_token_embeddings(tok.get_vocab_size())
  hf.save_pretrained(tmp_path / "hf")
  tok.save(str(tmp_path / "hf" / "tokenizer.json"))
  wd = tmp_path / "wd"
  cfg = convert.import_hf(str(tmp_path / "hf"), str(wd), preset="tiny")
  assert cfg.data.tokenizer == str(wd / "vocab" / "tokenizer.json")
  vocab = load_vocab(cfg.data.tokenizer)
  assert isinstance(vocab, TokenizersVocab)
  assert (vocab.pad_id, vocab.unk_id, vocab.cls_id, vocab.sep_id, vocab.mask_id) == (0, 1, 2, 3, 4)
  assert vocab.bos_id == vocab.cls_id and vocab.eos_id == vocab.sep_id  # BERT has no bos/eos
  assert vocab.decode(vocab.encode("the Flax model")) == "the flax model"
  ex = convert.export_hf(str(wd), str(tmp_path / "ex"))
  fast = transformers.AutoTokenizer.from_pretrained(ex)
  assert fast("jax token", add_special_tokens=False)["input_ids"] == tok.encode("jax token").ids
  assert fast.mask_token == "[MASK]" and fast.pad_token == "[PAD]"
