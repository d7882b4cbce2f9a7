"""lm_dataset: lossless packing, segment-aware inputs, determinism, exact resume, rows per
process."""
import json

import numpy as np
import pytest

from common.data import lanes, pipeline
from common.vocab import SentencePieceVocab
from tests.common.test_vocab import synthetic_texts, train_tiny_vocab

SEQ_LEN = 16


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
  return SentencePieceVocab(train_tiny_vocab(str(tmp_path_factory.mktemp("vocab"))))


@pytest.fixture(scope="module")
def docs():
  texts = synthetic_texts(40, seed=1)
  texts[5] = " ".join(texts[:8])  # one document several rows long
  texts[9] = ""  # empty document: just eos
  return [{"text": t, "id": str(i)} for i, t in enumerate(texts)]


def _ds(docs, vocab, **kw):
  args = dict(text_field="text", seq_len=SEQ_LEN, batch_size=4, seed=0)
  if kw.get("num_epochs"):
    args["stop_when_exhausted"] = True
  return pipeline.lm_dataset(docs, vocab, **{**args, **kw})


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for x, y in zip(batches_a, batches_b):
    assert x.keys() == y.keys()
    for key in x:
      np.testing.assert_array_equal(x[key], y[key])


def _real_tokens(batches):
  return np.concatenate([b["targets"][b["weights"] == 1] for b in batches]).tolist()


def test_packing_keeps_every_token_once_in_shuffled_order(docs, vocab):
  batches = list(_ds(docs, vocab, batch_size=1, num_epochs=1, seed=3))
  order = lanes.Permutation(len(docs), 3, 0)(np.arange(len(docs)))  # the epoch's doc order
  expected = [t for i in order for t in vocab.encode(docs[i]["text"]) + [vocab.eos_id]]
  assert _real_tokens(batches) == expected
  assert len(batches) == -(-len(expected) // SEQ_LEN)  # the last row is padded, not dropped


def test_rows_deal_documents_round_robin_and_drop_nothing(docs, vocab):
  """Row r of each batch continues the documents at positions r, r + B, ... of the epoch."""
  batches = list(_ds(docs, vocab, batch_size=4, num_epochs=1, shuffle=False))
  for r in range(4):
    row_tokens = [t for b in batches for t in b["targets"][r][b["weights"][r] == 1]]
    assert row_tokens == [t for d in docs[r::4] for t in vocab.encode(d["text"]) +
                          [vocab.eos_id]]


def test_features_are_segment_aware(docs, vocab):
  for b in _ds(docs, vocab, num_epochs=1, batch_size=1):
    assert set(b) == {"inputs", "targets", "segment_ids", "positions", "weights"}
    assert all(v.shape == (1, SEQ_LEN) for v in b.values())
    assert [b[k].dtype for k in ("inputs", "targets", "segment_ids", "positions", "weights")] \
        == [np.int32] * 4 + [np.float32]
    seg, pos, inp, tgt = (b[k][0] for k in ("segment_ids", "positions", "inputs", "targets"))
    real = seg > 0
    np.testing.assert_array_equal(b["weights"][0], real.astype(np.float32))
    assert not np.any(inp[~real]) and not np.any(tgt[~real]) and not np.any(pos[~real])
    assert seg[0] == 1 and np.all(np.diff(seg[real]) >= 0) and np.all(np.diff(seg[real]) <= 1)
    for t in range(SEQ_LEN):
      if not real[t]:
        continue
      starts = t == 0 or seg[t] != seg[t - 1]
      assert pos[t] == (0 if starts else pos[t - 1] + 1)
      assert inp[t] == (vocab.bos_id if starts else tgt[t - 1])


def test_deterministic_for_a_seed(docs, vocab):
  a, b, c = (_take(iter(_ds(docs, vocab, seed=s)), 6) for s in (0, 0, 1))
  _assert_same(a, b)
  assert any(not np.array_equal(x["targets"], z["targets"]) for x, z in zip(a, c))


def test_without_eos_empty_documents_vanish(docs, vocab):
  tokens = _real_tokens(list(_ds(docs, vocab, batch_size=1, num_epochs=1, shuffle=False,
                                 add_eos=False)))
  assert tokens == [t for d in docs for t in vocab.encode(d["text"])]


def test_epochs_are_reshuffled(docs, vocab):
  tokens = _real_tokens(list(_ds(docs, vocab, batch_size=1, num_epochs=2)))
  first = _real_tokens(list(_ds(docs, vocab, batch_size=1, num_epochs=1)))
  second = tokens[len(first):]
  assert sorted(second) == sorted(first) and second != first


@pytest.mark.parametrize("k", [0, 1, 3, 7])
def test_resume_from_plain_json_state_is_bitwise(docs, vocab, k):
  it = _ds(docs, vocab, batch_size=2)
  _take(it, k)
  saved = json.dumps(it.get_state())  # the state is plain JSON: what checkpointers write
  rest = _take(it, 12)  # runs into the second epoch
  resumed = _ds(docs, vocab, batch_size=2)
  resumed.set_state(json.loads(saved))
  _assert_same(rest, _take(resumed, 12))


def test_processes_build_their_own_rows_of_the_same_global_batches(docs, vocab):
  whole = _take(_ds(docs, vocab, batch_size=4), 5)
  halves = [_take(_ds(docs, vocab, batch_size=4, lanes=range(2 * p, 2 * p + 2)), 5)
            for p in (0, 1)]
  for step, want in enumerate(whole):
    for key in want:
      got = np.concatenate([halves[0][step][key], halves[1][step][key]])
      np.testing.assert_array_equal(got, want[key])


def test_clear_errors(docs, vocab, monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(jax, "process_count", lambda: 3)
  with pytest.raises(ValueError, match="global batch_size 8 is not divisible by the 3 JAX"):
    _ds(docs, vocab, batch_size=8)
  with pytest.raises(ValueError, match="no text field 'body'"):
    next(_ds(docs, vocab, text_field="body", lanes=range(8), batch_size=8))
  with pytest.raises(ValueError, match="seq_len and batch_size must be >= 1"):
    _ds(docs, vocab, seq_len=0, lanes=range(4))


def test_loss_regex_weights_only_the_matched_text(docs, vocab):
  """Completion-only loss: weight 1 exactly on the tokens of the regex's matches, in order."""
  qa = [{"text": f"{d['text'][:20]} Answer: {d['text'][-12:]}"} for d in docs if d["text"]]
  regex = r"(?<=Answer:) .*"
  batches = list(_ds(qa, vocab, batch_size=1, num_epochs=1, shuffle=False, loss_regex=regex))
  weighted = np.concatenate([b["targets"][b["weights"] > 0] for b in batches]).tolist()
  answers = [t for d in qa for t in vocab.encode(" " + d["text"].split(" Answer: ", 1)[1])]
  assert weighted == answers and len(answers) > 0
  for b in batches:  # padding and the eos never carry loss; weights are 0/1
    assert not np.any(b["weights"][b["segment_ids"] == 0])
    assert set(np.unique(b["weights"]).tolist()) <= {0.0, 1.0}
  # Every token is still there, packed and segmented as without the regex.
  real = np.concatenate([b["targets"][b["segment_ids"] > 0] for b in batches]).tolist()
  assert real.count(vocab.eos_id) == len(qa) and len(real) > len(answers)
  with pytest.raises(ValueError, match=r"data.loss_regex '\(' is not a valid"):
    _ds(qa, vocab, loss_regex="(")
