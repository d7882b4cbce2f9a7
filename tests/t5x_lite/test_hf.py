"""T5 <-> Hugging Face: random tiny T5ForConditionalGeneration (T5 1.0: ReLU, tied + scaled
output; T5.1.1: gated-GELU, separate lm_head) imported with teacher-forced logit parity under
padding (scanned and unscanned, log-spaced relative-position buckets exercised), exported back
bit-exactly, and the SentencePiece tokenizer carried along."""

import os

import numpy as np
import pytest

import torch  # installed by the test extra: a missing torch must fail, not skip
import transformers

import jax  # pylint: disable=g-import-not-at-top
from flax import nnx  # pylint: disable=g-import-not-at-top
from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

from common import convert, entry  # pylint: disable=g-import-not-at-top

V, S, T = 80, 20, 14

T5_1_0 = dict(feed_forward_proj="relu", tie_word_embeddings=True)
T5_1_1 = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False,
              relative_attention_num_buckets=8, relative_attention_max_distance=12)


def _hf_model(seed=0, **kw):
  """Random HF T5; every tensor random (norms and relative-position tables included). T5.1.1's
  separate lm_head is made its own tensor (transformers 5 builds it tied)."""
  torch.manual_seed(seed)
  cfg = transformers.T5Config(vocab_size=V, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                              num_decoder_layers=3, num_heads=4, **kw)
  model = transformers.T5ForConditionalGeneration(cfg)
  if kw.get("tie_word_embeddings") is False:
    model.lm_head.weight = torch.nn.Parameter(torch.empty(V, 32))
  with torch.no_grad():
    for p in model.parameters():
      p.normal_(0.0, 0.3)
  return model.eval()


def _inputs():
  rng = np.random.default_rng(1)
  enc, dec = rng.integers(0, V, (2, S)), rng.integers(0, V, (2, T))
  enc_mask, dec_mask = np.ones((2, S), np.int32), np.ones((2, T), np.int32)
  enc_mask[1, 13:] = 0
  dec_mask[1, 9:] = 0
  return enc, enc_mask, dec, dec_mask


def _hf_logits(model, enc, enc_mask, dec, dec_mask):
  with torch.no_grad():
    return model(input_ids=torch.tensor(enc), attention_mask=torch.tensor(enc_mask),
                 decoder_input_ids=torch.tensor(dec),
                 decoder_attention_mask=torch.tensor(dec_mask)).logits.numpy()


@pytest.mark.parametrize("name,kw,scan,fmt", [
    ("t5_1_0", T5_1_0, True, "safetensors"),
    ("t5_1_1", T5_1_1, False, "safetensors"),
    ("t5_1_0", T5_1_0, True, "bin"),  # PyTorch state_dict: tied copies present
])
def test_teacher_forced_parity_and_exact_export(tmp_path, name, kw, scan, fmt):
  hf = _hf_model(**kw)
  src = str(tmp_path / "hf")
  if fmt == "safetensors":
    hf.save_pretrained(src)
  else:
    os.makedirs(src)
    hf.config.to_json_file(os.path.join(src, "config.json"))
    torch.save(hf.state_dict(), os.path.join(src, "pytorch_model.bin"))
  wd = str(tmp_path / "wd")
  cfg = convert.import_hf(src, wd, preset="tiny", scan_layers=scan)
  m = cfg.model
  assert m.logits_via_embedding == (name == "t5_1_0")
  assert m.activation == ("relu" if name == "t5_1_0" else "gated-gelu")
  assert (m.num_encoder_layers, m.num_decoder_layers, m.head_dim) == (2, 3, 8)
  _, _, net = convert.load_network(wd)
  enc, enc_mask, dec, dec_mask = _inputs()
  graphdef, state = nnx.split(net)  # one compiled program: faster than op-by-op here
  forward = jax.jit(lambda state, *a: nnx.merge(graphdef, state)(
      a[0], a[1], encoder_segment_ids_BxS=a[2], decoder_segment_ids_BxT=a[3]))
  ours = np.asarray(forward(state, enc, dec, enc_mask, dec_mask))
  ref = _hf_logits(hf, enc, enc_mask, dec, dec_mask)
  keep = dec_mask.astype(bool)
  rel = float(np.abs(ours[keep] - ref[keep]).max() / np.abs(ref[keep]).max())
  assert rel <= 1e-4, rel
  print(f"{name} scan={scan} {fmt}: max rel diff {rel:.2e}")

  out = convert.export_hf(wd, str(tmp_path / "export"))
  got = load_file(os.path.join(out, "model.safetensors"))
  hf.save_pretrained(str(tmp_path / "resaved"))
  want = load_file(str(tmp_path / "resaved" / "model.safetensors"))
  assert sorted(got) == sorted(want)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  back = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
  np.testing.assert_array_equal(_hf_logits(back, enc, enc_mask, dec, dec_mask), ref)


@pytest.mark.parametrize("proj", ["gated-silu", "silu"])
def test_unsupported_activation_is_rejected(tmp_path, proj):
  _hf_model(feed_forward_proj=proj).save_pretrained(tmp_path / "hf")
  with pytest.raises(ValueError, match=f"feed_forward_proj='{proj}'"):
    convert.import_hf(str(tmp_path / "hf"), str(tmp_path / "wd"), preset="tiny")


def test_spiece_tokenizer_travels(tmp_path):
  """T5's spiece.model (pad 0 / eos 1 / unk 2, no bos) + sentinels -> vocab/ -> export."""
  import io
  import sentencepiece as spm
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "gamma", "delta", "flax", "jax", "token", "model", "the", "a"]
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter([" ".join(rng.choice(words, 10)) for _ in range(200)]),
      model_writer=model, vocab_size=60, pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
      hard_vocab_limit=False, minloglevel=2)
  src = tmp_path / "hf"
  _hf_model(**T5_1_1).save_pretrained(src)
  (src / "spiece.model").write_bytes(model.getvalue())
  (src / "tokenizer_config.json").write_text('{"extra_ids": 10}')
  cfg = convert.import_hf(str(src), str(tmp_path / "wd"), preset="tiny")
  cfg.data.extra_ids = 10
  vocab = entry.run_vocab(cfg, extra_ids=10)  # what t5x_lite.train does
  sp = spm.SentencePieceProcessor(model_file=str(src / "spiece.model"))
  assert vocab.vocab_size == sp.get_piece_size() + 10
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
  assert vocab.sentinel_id(0) == vocab.vocab_size - 1
  text = "the flax model"
  assert vocab.encode(text) == sp.encode(text) and vocab.decode(vocab.encode(text)) == text
  out = convert.export_hf(str(tmp_path / "wd"), str(tmp_path / "ex"))
  assert (tmp_path / "ex" / "spiece.model").read_bytes() == model.getvalue()
  hf_tok = transformers.AutoTokenizer.from_pretrained(out)
  assert hf_tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text)
  assert hf_tok.convert_tokens_to_ids("<extra_id_0>") == vocab.sentinel_id(0)
