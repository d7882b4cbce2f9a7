"""Span corruption follows T5's definition and is exactly invertible."""

import numpy as np
import pytest

from t5x_lite import span_corruption as sc
from tests.t5x_lite.fakes import WordVocab

VOCAB = WordVocab()


@pytest.mark.parametrize("length", [2, 7, 20, 33, 100, 141, 568])
def test_invariants(length):
  for seed in range(5):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(4, VOCAB.pieces, length).astype(np.int32)
    mask = sc.random_spans_noise_mask(length, np.random.default_rng(seed))
    out = sc.span_corrupt(tokens, np.random.default_rng(seed), VOCAB)
    inputs, targets = out["inputs"], out["targets"]
    # Expanding the sentinels back gives the original tokens exactly.
    np.testing.assert_array_equal(sc.expand_sentinels(inputs, targets, VOCAB), tokens)
    # Noise fraction and span count follow the definition.
    num_noise, num_spans = sc.noise_counts(length)
    assert num_noise == min(max(round(length * 0.15), 1), length - 1)
    assert num_spans == max(round(num_noise / 3), 1)
    assert mask.sum() == num_noise
    starts = mask & ~np.concatenate([[False], mask[:-1]])
    assert starts.sum() == num_spans and not mask[0]  # spans start with non-noise
    # Sentinels count down from the last id, in order, once per span; both end with EOS.
    sentinels = [VOCAB.sentinel_id(j) for j in range(num_spans)]
    assert [t for t in inputs if t >= VOCAB.pieces] == sentinels
    assert [t for t in targets if t >= VOCAB.pieces] == sentinels
    assert targets[0] == VOCAB.sentinel_id(0) == VOCAB.vocab_size - 1
    assert inputs[-1] == targets[-1] == VOCAB.eos_id
    assert len(inputs) == length - num_noise + num_spans + 1
    assert len(targets) == num_noise + num_spans + 1


def test_random_spans_helper_matches_t5():
  assert sc.random_spans_helper(512) == (568, 114)
  for inputs_length in (32, 64, 128, 256, 512, 1024):
    raw, targets = sc.random_spans_helper(inputs_length)
    out = sc.span_corrupt(np.arange(4, 4 + raw) % 150 + 4, np.random.default_rng(0), VOCAB)
    assert len(out["inputs"]) == inputs_length and len(out["targets"]) == targets


def test_not_enough_sentinels():
  with pytest.raises(ValueError, match="needs 28 sentinels.*extra_ids=10"):
    sc.check_sentinels(WordVocab(extra_ids=10), 568)


def test_dataset_batches_and_exact_resume():
  docs = [{"text": " ".join(f"w{(7 * i + j) % 150}" for j in range(5 + i % 40))}
          for i in range(200)]
  ds, target_len = sc.span_corruption_dataset(docs, VOCAB, text_field="text", input_len=32,
                                              batch_size=4, seed=3)
  assert target_len == sc.random_spans_helper(32)[1]
  it = iter(ds)
  first = next(it)
  assert first["encoder_input_tokens"].shape == (4, 32)
  assert first["decoder_target_tokens"].shape == (4, target_len)
  assert (first["encoder_segment_ids"] == 1).all()  # raw chunks fill the inputs exactly
  np.testing.assert_array_equal(first["decoder_input_tokens"][:, 1:],
                                first["decoder_target_tokens"][:, :-1])
  assert (first["decoder_input_tokens"][:, 0] == 0).all()
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  resumed = iter(ds)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
