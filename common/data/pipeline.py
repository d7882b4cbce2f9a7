"""Language-model rows: documents -> tokens (+ EOS) -> concatenated and split into rows of
`seq_len` (no token dropped; a long document continues in the next row as a new segment) ->
model features. Row r of each global batch is lane r of `common.data.lanes`, so the batches are
a function of (seed, step) whatever the number of processes, and resume exactly."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from common.data.lanes import Identity, LaneIterator, owned_lanes
from common.data.rows import ConcatSplit
from common.data.records import get_text, Source
from common.vocab import Vocabulary


def _finalize(batch: dict[str, np.ndarray], bos_id: int, pad_id: int) -> dict[str, np.ndarray]:
  """Packed rows -> model features; inputs never see a token of another segment."""
  targets = batch["targets"]
  segment_ids = batch["targets_segment_ids"]
  positions = batch["targets_positions"]
  inputs = np.roll(targets, 1, axis=1)
  inputs[positions == 0] = bos_id  # column 0 is always a segment start or padding
  inputs[segment_ids == 0] = pad_id
  weights = (segment_ids > 0).astype(np.float32)
  if "loss_weights" in batch:
    weights *= batch["loss_weights"]
  return {"inputs": inputs, "targets": targets, "segment_ids": segment_ids,
          "positions": positions, "weights": weights}


def lm_dataset(source: Source, vocab: Vocabulary, *, text_field: str, seq_len: int,
               batch_size: int, seed: int, shuffle: bool = True, num_epochs: int | None = None,
               add_eos: bool = True, loss_regex: str = "", dataset_name: str = "",
               lanes: range | None = None, stop_when_exhausted: bool = False) -> LaneIterator:
  """This process's rows of [batch_size, seq_len] packed rows (`batch_size` is global).

  `num_epochs=None` repeats forever; with a finite count, rows are padding once the data runs
  out (`stop_when_exhausted`: stop instead). `loss_regex` (TRL's completion-only loss,
  generalised): when set, only tokens of text the regex matches carry loss (e.g.
  `(?<=Label:) \\w+` trains on the answers of a prompt format, not on the prompts); the
  matched and unmatched pieces are tokenized separately.
  """
  if seq_len < 1 or batch_size < 1:
    raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len} and {batch_size}")
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f"num_epochs must be >= 1 or None (forever), got {num_epochs}")
  lanes = owned_lanes(batch_size) if lanes is None else lanes
  eos = [vocab.eos_id] if add_eos else []
  pattern = compile_loss_regex(loss_regex) if loss_regex else None

  def tokenize(example: dict[str, Any], key: tuple[int, int]) -> dict[str, np.ndarray] | None:
    del key  # deterministic
    text = get_text(example, text_field)
    if pattern is None:
      ids = vocab.encode(text) + eos
      return {"targets": np.asarray(ids, dtype=np.int32)} if ids else None
    ids, weights = _encode_weighted(text, pattern, vocab)
    ids, weights = ids + eos, weights + [0.0] * len(eos)
    if not ids:
      return None
    return {"targets": np.asarray(ids, np.int32), "loss_weights": np.asarray(weights, np.float32)}

  keys = ("targets",) if pattern is None else ("targets", "loss_weights")
  identity = Identity(dataset_name or type(source).__name__, len(source), batch_size, seed,
                      shuffle)
  return LaneIterator(source, tokenize, ConcatSplit(seq_len, keys),
                      lambda b, _: _finalize(b, vocab.bos_id, vocab.pad_id), identity=identity,
                      num_epochs=num_epochs, lanes=lanes, stop_when_exhausted=stop_when_exhausted)


def compile_loss_regex(loss_regex: str) -> re.Pattern:
  """The compiled `data.loss_regex`, or a ValueError that names it."""
  try:
    return re.compile(loss_regex)
  except re.error as e:
    raise ValueError(f"data.loss_regex {loss_regex!r} is not a valid regular expression: {e}"
                     ) from e


def _encode_weighted(text: str, pattern: re.Pattern, vocab: Vocabulary
                     ) -> tuple[list[int], list[float]]:
  """Token ids of `text` and a weight per token: 1 inside the regex's matches, 0 outside."""
  ids: list[int] = []
  weights: list[float] = []
  pos = 0
  for m in pattern.finditer(text):
    if m.end() == m.start():
      continue
    for piece, w in ((text[pos:m.start()], 0.0), (m.group(), 1.0)):
      piece_ids = vocab.encode(piece) if piece else []
      ids += piece_ids
      weights += [w] * len(piece_ids)
    pos = m.end()
  tail = vocab.encode(text[pos:]) if text[pos:] else []
  return ids + tail, weights + [0.0] * len(tail)
