"""Seq2seq packing: segment ids, positions, shifted decoder inputs; length checks."""

import numpy as np
import pytest

from common.data import seq2seq
from tests.t5x_lite.fakes import WordVocab


def _pairs():
  return [{"src": "w1 w2 w3", "tgt": "w9 w8"}, {"src": "w4 w5", "tgt": "w7"},
          {"src": "w6 w7 w8 w9 w10", "tgt": "w1 w2 w3"}, {"src": "w11", "tgt": "w12 w13"}]


def _fn(**kw):
  args = dict(input_field="src", target_field="tgt", prefix="", max_input_len=8,
              max_target_len=5, truncate_inputs=True, truncate_targets=False) | kw
  return seq2seq.text_pair_fn(WordVocab(), **args)


def test_packed_rows_keep_segments_apart():
  ds = seq2seq.seq2seq_dataset(_pairs(), _fn(), input_len=10, target_len=8, batch_size=2,
                               seed=0, shuffle=False, num_epochs=1)
  batch = next(iter(ds))
  seg, pos = batch["decoder_segment_ids"], batch["decoder_positions"]
  assert batch["encoder_input_tokens"].shape == (2, 10) and seg.shape == (2, 8)
  assert seg.max() >= 2  # several examples share a row
  targets, dec_in = batch["decoder_target_tokens"], batch["decoder_input_tokens"]
  for b in range(2):
    for s in set(seg[b]) - {0}:
      cols = np.where(seg[b] == s)[0]
      np.testing.assert_array_equal(pos[b, cols], np.arange(len(cols)))
      assert dec_in[b, cols[0]] == 0  # every segment starts from 0
      np.testing.assert_array_equal(dec_in[b, cols[1:]], targets[b, cols[:-1]])
      assert targets[b, cols[-1]] == 1  # ends with EOS
      enc_cols = np.where(batch["encoder_segment_ids"][b] == s)[0]
      assert batch["encoder_input_tokens"][b, enc_cols[-1]] == 1
  np.testing.assert_array_equal(batch["decoder_loss_weights"], seg > 0)
  assert (targets[seg == 0] == 0).all() and (dec_in[seg == 0] == 0).all()


def test_target_longer_than_allowed():
  with pytest.raises(ValueError, match="target has 4 tokens.*max_target_len=3.*truncate_targets"):
    _fn(max_target_len=3)(_pairs()[2])
  out = _fn(max_target_len=3, truncate_targets=True)(_pairs()[2])
  np.testing.assert_array_equal(out["targets"], [5, 6, 1])  # truncated, EOS kept


def test_missing_field_names_the_flag():
  with pytest.raises(ValueError, match="no input field 'body'.*\\['src', 'tgt'\\].*input_field"):
    _fn(input_field="body")(_pairs()[0])
