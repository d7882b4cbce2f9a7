"""Dynamic MLM masking: 15 % / 80-10-10 statistics, special tokens and padding never selected,
the per-sequence cap, whole-word groups selected together."""

import numpy as np
import pytest

from bert_flax.masking import MaskingConfig, mask_batch, mask_sequence

V, PAD, CLS, SEP, MASK = 1000, 0, 4, 5, 6
SPECIAL = np.array([0, 1, 2, 3, CLS, SEP, MASK], np.int32)


def _cfg(**kw) -> MaskingConfig:
  return MaskingConfig(mask_id=MASK, special_ids=SPECIAL,
                       replacement_ids=np.arange(7, V, dtype=np.int32),
                       max_predictions=kw.pop("max_predictions", 64), **kw)


def _rows(n: int, length: int = 128, seed: int = 0) -> np.ndarray:
  """Packed-looking rows: two [CLS] A [SEP] examples (100 ordinary tokens), then padding."""
  rng = np.random.default_rng(seed)
  rows = rng.integers(7, V, (n, length)).astype(np.int32)
  rows[:, 0] = CLS
  rows[:, 40] = SEP
  rows[:, 60] = CLS
  rows[:, 103] = SEP
  rows[:, 104:] = PAD
  return rows


def test_statistics_on_a_large_sample():
  rows = _rows(4000)
  out = mask_batch(rows, np.random.default_rng(1), _cfg())
  w = out["mlm_weights"] > 0
  pos = np.where(w, out["mlm_positions"], 0)
  r = np.arange(rows.shape[0])[:, None]
  selected = np.zeros(rows.shape, bool)
  selected[np.broadcast_to(r, pos.shape)[w], pos[w]] = True
  candidates = ~np.isin(rows, SPECIAL)
  assert not (selected & ~candidates).any()  # special tokens and padding never selected
  assert abs(selected.sum() / candidates.sum() - 0.15) < 0.003
  # Targets are the original tokens at the selected positions.
  np.testing.assert_array_equal(out["mlm_targets"][w], rows[np.broadcast_to(r, pos.shape)[w],
                                                           pos[w]])
  new = out["tokens"][selected]
  old = rows[selected]
  masked, kept = (new == MASK).mean(), (new == old).mean()
  assert abs(masked - 0.8) < 0.01 and abs(kept - 0.1) < 0.01
  randomised = (new != MASK) & (new != old)
  assert abs(randomised.mean() - 0.1) < 0.01
  assert not np.isin(new[randomised], SPECIAL).any()  # replacements are ordinary tokens
  np.testing.assert_array_equal(out["tokens"][~selected], rows[~selected])  # nothing else moves


def test_cap_and_rows_without_candidates():
  rows = _rows(50)
  out = mask_batch(rows, np.random.default_rng(0), _cfg(max_predictions=5))
  assert out["mlm_positions"].shape == (50, 5) and (out["mlm_weights"].sum(1) == 5).all()
  empty = mask_sequence(np.array([CLS, SEP, PAD, PAD], np.int32), np.random.default_rng(0), _cfg())
  assert empty["mlm_weights"].sum() == 0
  np.testing.assert_array_equal(empty["tokens"], [CLS, SEP, PAD, PAD])


def test_whole_word_groups_are_masked_together():
  # Ids >= 500 continue a word; a word is one start (< 500) and 0-3 continuations.
  starts = np.arange(V) < 500
  rng = np.random.default_rng(0)
  rows = []
  for _ in range(500):
    row = [CLS]
    while len(row) < 90:
      row += [int(rng.integers(7, 500))] + list(rng.integers(500, V, rng.integers(0, 4)))
    rows.append(row[:90] + [SEP] + [PAD] * 9)
  rows = np.array(rows, np.int32)
  cfg = _cfg(word_starts=starts)
  total = 0
  for row in rows:
    out = mask_sequence(row, rng, cfg)
    sel = np.zeros(row.shape, bool)
    sel[out["mlm_positions"][out["mlm_weights"] > 0]] = True
    total += sel.sum()
    # Word ids: a new word at every start token and after any special token.
    word = np.cumsum(starts[row] | np.isin(np.roll(row, 1), SPECIAL))
    for w in np.unique(word[sel]):
      members = (word == w) & ~np.isin(row, SPECIAL)
      assert sel[members].all(), (row, sel)
  assert abs(total / (~np.isin(rows, SPECIAL)).sum() - 0.15) < 0.01


@pytest.mark.parametrize("kw,match", [({"rate": 0.0}, "mask_rate"),
                                      ({"mask_frac": 0.95}, "sum to <= 1"),
                                      ({"max_predictions": 0}, "max_predictions")])
def test_bad_settings(kw, match):
  with pytest.raises(ValueError, match=match):
    _cfg(**kw)
