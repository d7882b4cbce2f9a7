"""Encoder-decoder input: (inputs, targets) token pairs -> T5X features, on the lanes of
`common.data.lanes`.

Pairs are either packed (first-fit: several short examples share a row, each keeping its own
segment id and positions in the encoder and in the decoder) or padded one per row. Batches
carry T5X's feature names:

  encoder_input_tokens, encoder_segment_ids, encoder_positions,
  decoder_target_tokens, decoder_input_tokens (targets shifted right, 0 at every segment
  start), decoder_segment_ids, decoder_positions, decoder_loss_weights.

Segment id 0 is padding.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from common.data.lanes import Identity, LaneIterator, owned_lanes
from common.data.rows import FirstFit, OnePerRow
from common.data.records import Source, get_text
from common.vocab import Vocabulary

FEATURES = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
            "decoder_target_tokens", "decoder_input_tokens", "decoder_segment_ids",
            "decoder_positions", "decoder_loss_weights")


def field_text(example: dict[str, Any], field: str, role: str) -> str:
  """The `role` ("input" or "target") text of an example (`get_text` with T5's flag names)."""
  return get_text(example, field, role=role, flag=f"--config.data.{role}_field")


def fit_length(ids: list[int], max_len: int, eos_id: int, *, truncate: bool, role: str
               ) -> np.ndarray:
  """ids + EOS, truncated (keeping the EOS) or refused when longer than `max_len`."""
  if len(ids) + 1 > max_len:
    if not truncate:
      raise ValueError(f"an example's {role} has {len(ids) + 1} tokens with EOS, more than "
                       f"data.max_{role}_len={max_len}; raise it or set "
                       f"--config.data.truncate_{role}s=True")
    ids = ids[:max_len - 1]
  return np.asarray(list(ids) + [eos_id], np.int32)


def text_pair_fn(vocab: Vocabulary, *, input_field: str, target_field: str, prefix: str,
                 max_input_len: int, max_target_len: int, truncate_inputs: bool,
                 truncate_targets: bool) -> Callable[[dict[str, Any]], dict[str, np.ndarray]]:
  """Example dict -> {"inputs", "targets"} token arrays: `prefix + input` and the target."""
  def fn(example: dict[str, Any]) -> dict[str, np.ndarray]:
    source = prefix + field_text(example, input_field, "input")
    target = field_text(example, target_field, "target")
    return {"inputs": fit_length(vocab.encode(source), max_input_len, vocab.eos_id,
                                 truncate=truncate_inputs, role="input"),
            "targets": fit_length(vocab.encode(target), max_target_len, vocab.eos_id,
                                  truncate=truncate_targets, role="target")}
  return fn


def shift_right(targets_BxL: np.ndarray, positions_BxL: np.ndarray,
                segment_ids_BxL: np.ndarray) -> np.ndarray:
  """Decoder inputs: each segment's targets delayed by one, starting with 0 (T5's BOS)."""
  inputs = np.roll(targets_BxL, 1, axis=-1)
  inputs[positions_BxL == 0] = 0
  inputs[segment_ids_BxL == 0] = 0
  return inputs


def finalize(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Packed/padded `inputs`/`targets` (+ _segment_ids, _positions) -> T5X features."""
  dec_seg = packed["targets_segment_ids"].astype(np.int32)
  dec_pos = packed["targets_positions"].astype(np.int32)
  targets = np.where(dec_seg > 0, packed["targets"], 0).astype(np.int32)
  enc_seg = packed["inputs_segment_ids"].astype(np.int32)
  return {
      "encoder_input_tokens": np.where(enc_seg > 0, packed["inputs"], 0).astype(np.int32),
      "encoder_segment_ids": enc_seg,
      "encoder_positions": packed["inputs_positions"].astype(np.int32),
      "decoder_target_tokens": targets,
      "decoder_input_tokens": shift_right(targets, dec_pos, dec_seg),
      "decoder_segment_ids": dec_seg,
      "decoder_positions": dec_pos,
      "decoder_loss_weights": (dec_seg > 0).astype(np.float32),
  }


def pad_pair(example: dict[str, np.ndarray], input_len: int, target_len: int
             ) -> dict[str, np.ndarray]:
  """One example per row: right-padded, segment id 1, positions 0..n-1."""
  out = {}
  for key, length in (("inputs", input_len), ("targets", target_len)):
    ids = example[key]
    if len(ids) > length:
      raise ValueError(f"{key} of {len(ids)} tokens do not fit in {length}")
    row = np.zeros(length, np.int32)
    row[:len(ids)] = ids
    seg = (np.arange(length) < len(ids)).astype(np.int32)
    out[key], out[f"{key}_segment_ids"] = row, seg
    out[f"{key}_positions"] = np.where(seg > 0, np.arange(length), 0).astype(np.int32)
  return out


def seq2seq_dataset(source: Source, example_fn: Callable[[dict[str, Any]], dict[str, np.ndarray]],
                    *, input_len: int, target_len: int, batch_size: int, seed: int,
                    shuffle: bool = True, num_epochs: int | None = None, pack: bool = True,
                    dataset_name: str = "", lanes: range | None = None,
                    stop_when_exhausted: bool = False) -> LaneIterator:
  """Examples of `source` -> `example_fn` -> this process's rows of each global batch, packed
  first-fit (several pairs per row) or padded one per row (`batch_size` is global; row r is
  lane r of `common.data.lanes`). `num_epochs=None` repeats forever; after a finite number,
  rows are padding (or the iterator stops: `stop_when_exhausted`)."""
  if min(input_len, target_len, batch_size) < 1:
    raise ValueError(f"input_len, target_len and batch_size must be >= 1, got {input_len}, "
                     f"{target_len}, {batch_size}")
  lanes = owned_lanes(batch_size) if lanes is None else lanes
  lengths = {"inputs": input_len, "targets": target_len}
  builder = FirstFit(lengths) if pack else OnePerRow(lengths)
  identity = Identity(dataset_name or type(source).__name__, len(source), batch_size, seed,
                      shuffle)
  return LaneIterator(source, lambda ex, key: example_fn(ex), builder, lambda rows, _: finalize(rows),
                      identity=identity, num_epochs=num_epochs, lanes=lanes,
                      stop_when_exhausted=stop_when_exhausted)


def pad_batch(examples: list[dict[str, np.ndarray]], input_len: int, target_len: int
              ) -> dict[str, np.ndarray]:
  """A list of {"inputs", "targets"} -> one padded batch of T5X features (inference, eval)."""
  rows = [pad_pair(ex, input_len, target_len) for ex in examples]
  return finalize({k: np.stack([r[k] for r in rows]) for k in rows[0]})
