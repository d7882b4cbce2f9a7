"""BERT pretraining input: documents -> `[CLS] A [SEP] B [SEP]` examples -> packed rows ->
dynamic masking -> batches, on the lanes of `common.data.lanes` like the LM pipeline.

Each document gives one example per epoch: a window of at most seq_len - 3 tokens (a random one
for longer documents), split into A and B at a sentence boundary (else a word boundary). With
NSP, B is replaced half of the time by a span of a random document. Several examples are packed
into one row: positions restart and attention stays within each example (segment ids), so a
packed example is computed exactly as it would be alone, without the padding.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from bert_flax.masking import MaskingConfig, mask_sequence, sentence_end_table, word_start_table
from common.data.classification import format_pair
from common.data.lanes import Identity, LaneIterator, owned_lanes
from common.data.rows import FirstFit
from common.data.records import get_text, Source
from common.vocab import Vocabulary

_PACKED = ("tokens", "type_ids", "nsp_labels", "nsp_weights")


class ExampleMaker:
  """Document text -> one pretraining example (variable length), drawn with `rng`."""

  def __init__(self, source: Source, vocab: Vocabulary, *, text_field: str, seq_len: int,
               nsp: bool):
    if seq_len < 5:
      raise ValueError(f"data.seq_len={seq_len} is too short for [CLS] A [SEP] B [SEP]")
    self.source, self.vocab, self.text_field = source, vocab, text_field
    self.seq_len, self.nsp = seq_len, nsp
    self.cls_id, self.sep_id = vocab.cls_id, vocab.sep_id
    # Without piece strings (an unknown backend) A/B may split anywhere.
    starts = word_start_table(vocab, required=False)
    self.word_starts = starts if starts is not None else np.ones(vocab.vocab_size, bool)
    ends = sentence_end_table(vocab)
    self.sentence_ends = ends if ends is not None else np.zeros(vocab.vocab_size, bool)

  def _ids(self, example: dict[str, Any]) -> np.ndarray:
    return np.asarray(self.vocab.encode(get_text(example, self.text_field)), np.int32)

  def _other_document(self, example: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    """Ids of a random document whose text differs from `example`'s (BERT redraws up to 10
    times); none found (a one-document corpus): empty, so B stays the real next segment."""
    text = get_text(example, self.text_field)
    for _ in range(10):
      other = self.source[int(rng.integers(len(self.source)))]
      if get_text(other, self.text_field) != text:
        return self._ids(other)
    return np.zeros(0, np.int32)

  def _split_point(self, ids: np.ndarray, rng: np.random.Generator) -> int:
    """Where B starts: after a sentence end if any, else at a word start, else anywhere."""
    starts = self.word_starts[ids[1:]]
    for ok in (starts & self.sentence_ends[ids[:-1]], starts):
      points = np.flatnonzero(ok) + 1
      if points.size:
        return int(rng.choice(points))
    return int(rng.integers(1, ids.size))

  def __call__(self, example: dict[str, Any], rng: np.random.Generator
               ) -> dict[str, np.ndarray] | None:
    ids = self._ids(example)
    if not ids.size:
      return None  # empty document: dropped by grain
    budget = self.seq_len - 3
    if ids.size > budget:
      start = int(rng.integers(0, ids.size - budget + 1))
      ids = ids[start:start + budget]
    if ids.size < 2:
      tokens, types = format_pair(ids, None, max_len=self.seq_len, cls_id=self.cls_id,
                                  sep_id=self.sep_id)
      return self._features(tokens, types, label=0, weight=0.0)
    cut = self._split_point(ids, rng)
    a, b = ids[:cut], ids[cut:]
    label = 0
    if self.nsp and rng.random() < 0.5:
      other = self._other_document(example, rng)
      if other.size:
        start = int(rng.integers(0, max(other.size - b.size, 0) + 1))
        b, label = other[start:start + b.size], 1
    tokens, types = format_pair(a, b, max_len=self.seq_len, cls_id=self.cls_id,
                                sep_id=self.sep_id)
    return self._features(tokens, types, label=label, weight=float(self.nsp))

  @staticmethod
  def _features(tokens: np.ndarray, types: np.ndarray, *, label: int, weight: float
                ) -> dict[str, np.ndarray]:
    """NSP label/weight ride on the [CLS] token, so they survive packing."""
    nsp_labels = np.zeros_like(tokens)
    nsp_weights = np.zeros(tokens.shape, np.float32)
    nsp_labels[0], nsp_weights[0] = label, weight
    return {"tokens": tokens, "type_ids": types, "nsp_labels": nsp_labels,
            "nsp_weights": nsp_weights}


def _finalize(rows: dict[str, np.ndarray], row_ids: np.ndarray, seed: int,
              masking: MaskingConfig, nsp: bool) -> dict[str, np.ndarray]:
  """Packed rows -> masked model features; each row's masks are drawn from (seed, row id), so
  every epoch masks differently and a resumed or re-sharded run masks the same way."""
  masked = [mask_sequence(rows["tokens"][i], np.random.default_rng([seed, 1, int(r)]), masking)
            for i, r in enumerate(row_ids)]
  out = {"type_ids": rows["type_ids"], "positions": rows["tokens_positions"],
         "segment_ids": rows["tokens_segment_ids"]}
  out |= {k: np.stack([m[k] for m in masked]) for k in masked[0]}
  if nsp:
    out |= {"nsp_labels": rows["nsp_labels"], "nsp_weights": rows["nsp_weights"]}
  return out


def pretrain_dataset(source: Source, vocab: Vocabulary, *, text_field: str, seq_len: int,
                     batch_size: int, seed: int, masking: MaskingConfig, nsp: bool = False,
                     shuffle: bool = True, num_epochs: int | None = None,
                     num_packing_bins: int = 0, dataset_name: str = "",
                     lanes: range | None = None, stop_when_exhausted: bool = False
                     ) -> LaneIterator:
  """This process's rows of [batch_size, seq_len] masked, packed rows (`batch_size` global).

  Features: tokens (corrupted), type_ids, positions, segment_ids [b, L]; mlm_positions,
  mlm_targets, mlm_weights [b, max_predictions]; with NSP also nsp_labels, nsp_weights [b, L]
  (set at each example's [CLS]). Examples are packed first-fit into `num_packing_bins` open
  rows per row of the batch (0: 4). Row r of each global batch is lane r
  (`common.data.lanes`): the same for any number of processes, resumed exactly.
  """
  lanes = owned_lanes(batch_size) if lanes is None else lanes
  maker = ExampleMaker(source, vocab, text_field=text_field, seq_len=seq_len, nsp=nsp)

  def example(raw: dict[str, Any], key: tuple[int, int]) -> dict[str, np.ndarray] | None:
    return maker(raw, np.random.default_rng([seed, *key]))

  builder = FirstFit({k: seq_len for k in _PACKED}, bins=num_packing_bins or 4)
  identity = Identity(dataset_name or type(source).__name__, len(source), batch_size, seed,
                      shuffle)
  return LaneIterator(source, example, builder,
                      lambda rows, ids: _finalize(rows, ids, seed, masking, nsp),
                      identity=identity, num_epochs=num_epochs, lanes=lanes,
                      stop_when_exhausted=stop_when_exhausted)
