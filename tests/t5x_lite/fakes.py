"""A word-level vocabulary and synthetic T5X batches, so data and sharding tests need no
SentencePiece model."""

from __future__ import annotations

import numpy as np

from common.data.seq2seq import pad_batch


class WordVocab:
  """Words 'w<N>' <-> id N + 4 (pad 0, eos 1, unk 2, bos 3), plus `extra_ids` sentinels."""

  pad_id, eos_id, unk_id, bos_id = 0, 1, 2, 3

  def __init__(self, pieces: int = 200, extra_ids: int = 100):
    self.pieces, self.extra_ids = pieces, extra_ids
    self.vocab_size = pieces + extra_ids

  def encode(self, text: str) -> list[int]:
    return [int(w[1:]) + 4 for w in text.split()]

  def sentinel_id(self, i: int) -> int:
    if not 0 <= i < self.extra_ids:
      raise ValueError(f"no sentinel {i}")
    return self.vocab_size - 1 - i


def synthetic_batch(i: int, batch: int = 8, input_len: int = 24, target_len: int = 12,
                    vocab: int = 500) -> dict[str, np.ndarray]:
  """Copy-ish task: the target is the first tokens of the input, reversed."""
  rng = np.random.default_rng(i)
  examples = []
  for _ in range(batch):
    n = int(rng.integers(4, input_len))
    inputs = rng.integers(4, vocab - 100, n).astype(np.int32)
    m = int(min(n, target_len - 1))
    examples.append({"inputs": np.append(inputs[:-1], 1).astype(np.int32),
                     "targets": np.append(inputs[:m][::-1][:m - 1], 1).astype(np.int32)})
  return pad_batch(examples, input_len, target_len)
