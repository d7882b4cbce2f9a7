"""Worker processes build the same batches as the training process, keep an exact data
position, and fail loudly."""

import numpy as np
import pytest

from common.data import pipeline, workers
from common.vocab import SentencePieceVocab
from tests.common.test_vocab import synthetic_texts, train_tiny_vocab

BATCH = 6


@pytest.fixture(scope="module")
def make(tmp_path_factory):
  vocab = SentencePieceVocab(train_tiny_vocab(str(tmp_path_factory.mktemp("vocab"))))
  docs = [{"text": t} for t in synthetic_texts(60, seed=2)]
  return lambda lanes: pipeline.lm_dataset(docs, vocab, text_field="text", seq_len=16,
                                           batch_size=BATCH, seed=0, lanes=lanes)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same(a, b):
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_split_lanes_covers_every_row_once():
  assert workers.split_lanes(range(0, 6), 4) == [range(0, 1), range(1, 3), range(3, 4),
                                                 range(4, 6)]
  assert workers.split_lanes(range(4, 6), 8) == [range(4, 5), range(5, 6)]


def test_workers_build_the_same_batches_and_position(make):
  alone = make(range(BATCH))
  expected = _take(alone, 5)
  it = workers.WorkerIterator(make, range(BATCH), 2)
  try:
    _assert_same(_take(it, 3), expected[:3])
    saved = it.get_state()
  finally:
    it.close()
  # The position is the third batch's, not how far the workers had prefetched.
  reference = make(range(BATCH))
  _take(reference, 3)
  assert saved == reference.get_state()
  resumed = workers.WorkerIterator(make, range(BATCH), 3)  # another worker count
  resumed.set_state(saved)
  try:
    _assert_same(_take(resumed, 2), expected[3:])
  finally:
    resumed.close()


def test_a_failing_worker_is_an_error_not_a_hang(make):
  def broken(lanes):
    it = make(lanes)
    if lanes.start > 0:
      it.example_fn = lambda *_: (_ for _ in ()).throw(ValueError("bad record"))
    return it
  it = workers.WorkerIterator(broken, range(BATCH), 2)
  with pytest.raises(RuntimeError, match="input worker failed: ValueError: bad record"):
    next(it)


def test_parallel_without_workers_is_the_plain_iterator(make):
  assert type(workers.parallel(make, BATCH, 0)).__name__ == "LaneIterator"
  assert isinstance(workers.parallel(make, BATCH, 2), workers.WorkerIterator)
