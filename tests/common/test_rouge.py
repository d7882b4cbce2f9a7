"""ROUGE as T5 reports it: the bounds (identical texts 100, disjoint 0) and bad input."""

import pytest

from common.rouge import KEYS, rouge

TEXTS = ["the cat sat on the mat.", "Packages install tools. Each one has a synopsis!",
         "a b c d e"]


def test_identical_predictions_score_100_and_disjoint_ones_0():
  assert rouge(TEXTS, TEXTS) == pytest.approx(dict.fromkeys(KEYS, 100.0))
  disjoint = ["dog runs quickly", "zebra xylophone quartz", "f g h"]
  assert rouge(disjoint, TEXTS) == dict.fromkeys(KEYS, 0.0)
  # Per-example mean: one identical pair of two is 50 on every measure.
  assert rouge([TEXTS[0], disjoint[1]], TEXTS[:2]) == pytest.approx(dict.fromkeys(KEYS, 50.0))


def test_bad_input():
  with pytest.raises(ValueError, match="2 predictions but 3 references"):
    rouge(TEXTS[:2], TEXTS)
  with pytest.raises(ValueError, match="no predictions"):
    rouge([], [])
