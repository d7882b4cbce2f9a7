"""T5's span-corruption objective (t5.data.preprocessors.span_corruption), in numpy.

A raw token chunk of length L gets round(L * noise_density) noise tokens (at least 1, at most
L - 1) in round(noise / mean_noise_span_length) spans (at least 1). The chunk alternates
non-noise and noise spans, starting with non-noise; span lengths are uniformly random
compositions. Inputs keep the non-noise tokens with each noise span replaced by one sentinel;
targets hold each sentinel followed by the span it replaced; both end with EOS. Sentinels
count down from the last id: span j uses <extra_id_j> = vocab.sentinel_id(j).

`random_spans_helper` gives the raw chunk length that yields exactly `inputs_length` inputs
(512 -> 568 raw tokens, 114 targets, as in T5).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from common.data.lanes import Identity, LaneIterator, owned_lanes
from common.data.rows import ConcatSplit
from common.data.seq2seq import pad_batch
from common.data.records import get_text, Source
from common.vocab import Vocabulary

NOISE_DENSITY = 0.15
MEAN_NOISE_SPAN_LENGTH = 3.0


def noise_counts(length: int, noise_density: float = NOISE_DENSITY,
                 mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH) -> tuple[int, int]:
  """(noise tokens, noise spans) for a chunk of `length` tokens (T5's definition)."""
  length = max(length, 2)
  num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
  num_spans = max(int(round(num_noise / mean_noise_span_length)), 1)
  return num_noise, num_spans


def random_spans_helper(inputs_length: int, noise_density: float = NOISE_DENSITY,
                        mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
                        ) -> tuple[int, int]:
  """(raw tokens length, targets length) so that corrupted inputs (+EOS) are `inputs_length`."""
  def lengths(tokens_length: int) -> tuple[int, int]:
    num_noise = int(round(tokens_length * noise_density))
    num_spans = int(round(num_noise / mean_noise_span_length))
    # Inputs: non-noise tokens, a sentinel per span, EOS. Targets: sentinels, noise, EOS.
    return tokens_length - num_noise + num_spans + 1, num_noise + num_spans + 1

  tokens_length = inputs_length - 1
  while lengths(tokens_length + 1)[0] <= inputs_length:
    tokens_length += 1
  _, targets_length = lengths(tokens_length)
  if noise_density == 0.5 and targets_length > inputs_length:
    tokens_length -= 1
    targets_length -= 1
  return tokens_length, targets_length


def _random_segmentation(num_items: int, num_segments: int, rng: np.random.Generator
                         ) -> np.ndarray:
  """`num_segments` positive lengths summing to `num_items`, uniformly at random."""
  cuts = np.sort(rng.choice(np.arange(1, num_items), num_segments - 1, replace=False))
  return np.diff(np.concatenate([[0], cuts, [num_items]]))


def random_spans_noise_mask(length: int, rng: np.random.Generator,
                            noise_density: float = NOISE_DENSITY,
                            mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
                            ) -> np.ndarray:
  """Boolean [length] noise mask: non-noise and noise spans alternate, non-noise first."""
  num_noise, num_spans = noise_counts(length, noise_density, mean_noise_span_length)
  padded = max(length, 2)
  noise_lengths = _random_segmentation(num_noise, num_spans, rng)
  keep_lengths = _random_segmentation(padded - num_noise, num_spans, rng)
  spans = np.stack([keep_lengths, noise_lengths], axis=1).reshape(-1)
  is_noise = np.repeat(np.tile([False, True], num_spans), spans)
  return is_noise[:length]


def _spans_to_sentinels(tokens: np.ndarray, mask: np.ndarray, vocab: Vocabulary) -> np.ndarray:
  """Each run of masked tokens -> one sentinel (the j-th run -> <extra_id_j>)."""
  prev = np.concatenate([[False], mask[:-1]])
  first = mask & ~prev
  span_index = np.cumsum(first) - 1
  out = tokens.copy()
  out[first] = [vocab.sentinel_id(int(j)) for j in span_index[first]]
  return out[~(mask & prev)]


def span_corrupt(tokens: np.ndarray, rng: np.random.Generator, vocab: Vocabulary,
                 noise_density: float = NOISE_DENSITY,
                 mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH
                 ) -> dict[str, np.ndarray]:
  """Raw tokens -> {"inputs", "targets"}, each ending with EOS."""
  tokens = np.asarray(tokens, np.int32)
  mask = random_spans_noise_mask(len(tokens), rng, noise_density, mean_noise_span_length)
  eos = np.asarray([vocab.eos_id], np.int32)
  return {"inputs": np.concatenate([_spans_to_sentinels(tokens, mask, vocab), eos]),
          "targets": np.concatenate([_spans_to_sentinels(tokens, ~mask, vocab), eos])}


def expand_sentinels(inputs: np.ndarray, targets: np.ndarray, vocab: Vocabulary) -> np.ndarray:
  """Inverse of `span_corrupt`: puts each target span back in place of its sentinel."""
  def body(ids):
    ids = [int(i) for i in ids]
    return ids[:ids.index(vocab.eos_id)] if vocab.eos_id in ids else ids

  sentinels = {vocab.sentinel_id(j): j for j in range(vocab.extra_ids)}
  spans: dict[int, list[int]] = {}
  current = None
  for t in body(targets):
    if t in sentinels:
      current = sentinels[t]
      spans[current] = []
    else:
      spans[current].append(t)
  out: list[int] = []
  for t in body(inputs):
    out.extend(spans[sentinels[t]] if t in sentinels else [t])
  return np.asarray(out, np.int32)


def check_sentinels(vocab: Vocabulary, raw_length: int,
                    mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
                    noise_density: float = NOISE_DENSITY) -> None:
  """The vocabulary must have a sentinel for every noise span of a `raw_length` chunk."""
  spans = noise_counts(raw_length, noise_density, mean_noise_span_length)[1]
  have = getattr(vocab, "extra_ids", 0)
  if have < spans:
    raise ValueError(f"span corruption of {raw_length}-token chunks needs {spans} sentinels "
                     f"(<extra_id_0>..<extra_id_{spans - 1}>) but the vocabulary has "
                     f"extra_ids={have}; use a vocabulary with extra_ids >= {spans} (T5: 100)")


def span_corruption_dataset(source: Source, vocab: Vocabulary, *, text_field: str,
                            input_len: int, batch_size: int, seed: int, shuffle: bool = True,
                            num_epochs: int | None = None,
                            noise_density: float = NOISE_DENSITY,
                            mean_noise_span_length: float = MEAN_NOISE_SPAN_LENGTH,
                            dataset_name: str = "", lanes: range | None = None,
                            stop_when_exhausted: bool = False) -> tuple[LaneIterator, int]:
  """Documents -> tokens concatenated across documents (T5's reduce_concat_tokens) -> chunks
  of the raw length that gives `input_len` inputs -> span corruption -> padded T5X rows.

  Returns (this process's rows of each global batch, targets length); row r of each batch is
  lane r of `common.data.lanes`. Each chunk's noise is drawn from (seed, row id), so a resumed
  or re-sharded run corrupts the same way.
  """
  raw_len, target_len = random_spans_helper(input_len, noise_density, mean_noise_span_length)
  check_sentinels(vocab, raw_len, mean_noise_span_length, noise_density)
  lanes = owned_lanes(batch_size) if lanes is None else lanes

  def tokenize(example: dict[str, Any], key: tuple[int, int]) -> dict[str, np.ndarray] | None:
    del key
    ids = vocab.encode(get_text(example, text_field))
    return {"tokens": np.asarray(ids, np.int32)} if ids else None

  def corrupt(rows: dict[str, np.ndarray], row_ids: np.ndarray) -> dict[str, np.ndarray]:
    pairs = []
    for chunk, seg, r in zip(rows["tokens"], rows["tokens_segment_ids"], row_ids):
      tokens = chunk[seg > 0]
      pair = (span_corrupt(tokens, np.random.default_rng([seed, 2, int(r)]), vocab,
                           noise_density, mean_noise_span_length) if tokens.size else
              {"inputs": np.zeros(0, np.int32), "targets": np.zeros(0, np.int32)})
      pairs.append(pair)
    return pad_batch(pairs, input_len, target_len)

  identity = Identity(dataset_name or type(source).__name__, len(source), batch_size, seed,
                      shuffle)
  it = LaneIterator(source, tokenize, ConcatSplit(raw_len, ("tokens",)), corrupt,
                    identity=identity, num_epochs=num_epochs, lanes=lanes,
                    stop_when_exhausted=stop_when_exhausted)
  return it, target_len
