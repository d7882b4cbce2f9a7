"""BERT pretraining pipeline: `[CLS] A [SEP] B [SEP]` examples packed into rows, NSP labels,
masks that change every epoch, and exact resumption."""

import random

import numpy as np
import pytest

from bert_flax.data import pretrain_dataset
from bert_flax.masking import masking_config, word_start_table
from common.tokenizer import train_sentencepiece
from common.vocab import SentencePieceVocab
from tests import fakes


def _docs(n: int, seed: int = 0, sentences: int = 4) -> list[dict[str, str]]:
  rng = random.Random(seed)
  words = fakes.made_up_words(rng, 200)
  sentence = lambda: " ".join(rng.choice(words) for _ in range(rng.randint(3, 9))) + "."
  return [{"text": " ".join(sentence() for _ in range(rng.randint(1, sentences)))}
          for _ in range(n)]


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
  path = tmp_path_factory.mktemp("sp") / "sp.model"
  return SentencePieceVocab(train_sentencepiece([d["text"] for d in _docs(300)], str(path),
                                                vocab_size=300))


def _dataset(vocab, docs, **kw):
  kw = dict(text_field="text", seq_len=48, batch_size=4, seed=0, shuffle=False,
            masking=masking_config(vocab, max_predictions=8)) | kw
  if kw.get("num_epochs"):
    kw["stop_when_exhausted"] = True
  return pretrain_dataset(docs, vocab, **kw)


def _unmasked(batch):
  tokens = batch["tokens"].copy()
  for row in range(tokens.shape[0]):
    w = batch["mlm_weights"][row] > 0
    tokens[row, batch["mlm_positions"][row][w]] = batch["mlm_targets"][row][w]
  return tokens


def test_examples_are_packed_cls_a_sep_b_sep(vocab):
  docs = _docs(40, seed=1, sentences=2)
  encoded = [vocab.encode(d["text"]) for d in docs]
  it = _dataset(vocab, docs)
  examples = 0
  for batch in (next(it) for _ in range(3)):
    examples += _check_packed_rows(batch, vocab, encoded)
  assert examples > 12  # several examples share a row


def _check_packed_rows(batch, vocab, encoded) -> int:
  tokens = _unmasked(batch)
  seg, pos, types = batch["segment_ids"], batch["positions"], batch["type_ids"]
  assert tokens.shape == (4, 48) and batch["mlm_positions"].shape == (4, 8)
  assert "nsp_labels" not in batch
  examples = 0
  for r in range(4):
    for s in set(seg[r]) - {0}:
      ex, ty, p = tokens[r][seg[r] == s], types[r][seg[r] == s], pos[r][seg[r] == s]
      np.testing.assert_array_equal(p, np.arange(ex.size))  # positions restart per example
      assert ex[0] == vocab.cls_id and ex[-1] == vocab.sep_id
      seps = np.flatnonzero(ex == vocab.sep_id)
      body = np.delete(ex, np.r_[0, seps])
      if len(seps) == 2:  # type 0 up to and including the first [SEP], then type 1
        np.testing.assert_array_equal(ty, (np.arange(ex.size) > seps[0]).astype(int))
      # Without NSP, A and B together are a contiguous window of one document.
      assert any(_contains(e, body) for e in encoded), body
      examples += 1
    assert (tokens[r][seg[r] == 0] == 0).all()  # padding is pad id
  return examples


def _contains(seq, window) -> bool:
  seq, window = list(seq), list(window)
  return any(seq[i:i + len(window)] == window for i in range(len(seq) - len(window) + 1))


def test_nsp_labels_on_cls_and_half_random(vocab):
  docs = _docs(200, seed=2, sentences=2)
  it = iter(_dataset(vocab, docs, nsp=True, batch_size=8))
  labels = []
  for _ in range(30):
    b = next(it)
    cls = (b["positions"] == 0) & (b["segment_ids"] > 0)
    assert ((b["nsp_weights"] > 0) <= cls).all()  # weight only on [CLS] positions
    labels += list(b["nsp_labels"][b["nsp_weights"] > 0])
  assert len(labels) > 200 and abs(np.mean(labels) - 0.5) < 0.1, np.mean(labels)


def test_random_next_segment_never_comes_from_the_same_document(vocab):
  doc = _docs(1, seed=3, sentences=4)[0]
  it = iter(_dataset(vocab, [doc, dict(doc)], nsp=True, batch_size=8))  # one text, twice
  weights = labels = 0
  for _ in range(10):
    b = next(it)
    weights += int((b["nsp_weights"] > 0).sum())
    labels += int(b["nsp_labels"][b["nsp_weights"] > 0].sum())
  assert weights > 20 and labels == 0  # every B is the real continuation


def test_masks_change_every_epoch_and_resume_exactly(vocab):
  one = [{"text": "ka lo mi ne su. ta ri po de gu fa zo. bi xe ka lo."}]
  # One document, seq_len 48: each row is that document from another epoch.
  batch = next(iter(_dataset(vocab, one, num_epochs=None, batch_size=8)))
  rows = {tuple(r) for r in batch["tokens"]}
  assert len(rows) > 1  # masked (and split) differently each epoch
  docs = _docs(60, seed=3)
  it = iter(_dataset(vocab, docs, shuffle=True, num_epochs=None))
  next(it)
  state = it.get_state()
  want = [next(it) for _ in range(3)]
  it2 = iter(_dataset(vocab, docs, shuffle=True, num_epochs=None))
  it2.set_state(state)
  for w in want:
    got = next(it2)
    for k in w:
      np.testing.assert_array_equal(got[k], w[k], err_msg=k)


def test_evaluation_batches_are_deterministic(vocab):
  docs = _docs(30, seed=4)
  a = list(_dataset(vocab, docs, num_epochs=1))
  b = list(_dataset(vocab, docs, num_epochs=1))
  assert len(a) == len(b) > 1
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["tokens"], y["tokens"])


def test_whole_word_masking_uses_sentencepiece_word_starts(vocab):
  starts = word_start_table(vocab)
  pieces = [vocab._sp.id_to_piece(i) for i in range(vocab.vocab_size)]
  assert all(starts[i] == p.startswith("\u2581") for i, p in enumerate(pieces))
  masking = masking_config(vocab, max_predictions=12, whole_word=True)
  batch = next(iter(_dataset(vocab, _docs(40, seed=5), masking=masking)))
  tokens = _unmasked(batch)
  special = np.isin(tokens, masking.special_ids)
  for r in range(tokens.shape[0]):
    sel = np.zeros(tokens.shape[1], bool)
    sel[batch["mlm_positions"][r][batch["mlm_weights"][r] > 0]] = True
    word = np.cumsum(starts[tokens[r]] | np.roll(special[r], 1))
    for w in np.unique(word[sel]):
      assert sel[(word == w) & ~special[r]].all()
