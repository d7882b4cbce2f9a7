"""grain pipeline: documents -> packed, batched language-model rows, resumable bit for bit.

Per process: own shard of the source -> per-epoch shuffle -> repeat -> tokenize (+eos) ->
concatenate-then-split packing (grain's ConcatThenSplitIterDataset: no token is dropped; a long
document continues in the next row as a new segment) -> batch -> model features.
"""
from __future__ import annotations

import re
from typing import Any

import grain
import jax
import numpy as np

from common.data.sources import Source, get_text
from common.vocab import Vocabulary

_TUPLE = "__tuple__"
# grain's default (16 threads, 500 prefetched) halved throughput on a 2-core host through GIL
# contention: debian, seq 256 x 16, ~17 batches/s vs ~30 with 4 threads (or with none).
READ_OPTIONS = grain.ReadOptions(num_threads=4, prefetch_buffer_size=256)


def _finalize(batch: dict[str, np.ndarray], bos_id: int, pad_id: int) -> dict[str, np.ndarray]:
    """Packed batch -> model features; inputs never see a token of another segment."""
    targets = batch["targets"]
    segment_ids = batch["targets_segment_ids"]
    positions = batch["targets_positions"]
    inputs = np.roll(targets, 1, axis=1)
    inputs[positions == 0] = bos_id  # column 0 is always a segment start or padding
    inputs[segment_ids == 0] = pad_id
    weights = (segment_ids > 0).astype(np.float32)
    if "loss_weights" in batch:
        weights *= batch["loss_weights"]
    return {
        "inputs": inputs,
        "targets": targets,
        "segment_ids": segment_ids,
        "positions": positions,
        "weights": weights,
    }


def lm_dataset(source: Source, vocab: Vocabulary, *, text_field: str, seq_len: int,
               batch_size: int, seed: int, shuffle: bool = True, num_epochs: int | None = None,
               add_eos: bool = True, shard_by_process: bool = True, loss_regex: str = "",
               read_options: grain.ReadOptions | None = None) -> grain.IterDataset:
    """Batches of [batch_size // process_count, seq_len] packed rows for this JAX process.

    `batch_size` is global. `num_epochs=None` repeats forever; with a finite count the last
    partial batch is dropped. Iterate with `iter(ds)`; its get_state() is plain JSON and
    set_state() resumes exactly (so grain.checkpoint.CheckpointSave works). Reading and
    tokenizing run in `read_options` threads (default READ_OPTIONS); no worker processes.

    `loss_regex` (TRL's completion-only loss, generalised): when set, only tokens of text the
    regex matches carry loss (e.g. `(?<=Label:) \\w+` trains on the answers of a prompt
    format, not on the prompts); the matched and unmatched pieces are tokenized separately.
    """
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be >= 1, got {seq_len} and {batch_size}")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1 or None (forever), got {num_epochs}")
    shards, shard = (jax.process_count(), jax.process_index()) if shard_by_process else (1, 0)
    if batch_size % shards:
        raise ValueError(f"global batch_size {batch_size} is not divisible by the {shards} JAX "
                         f"processes; use a multiple of {shards}")
    ds = grain.MapDataset.source(source)[shard::shards]
    if len(ds) == 0:
        raise ValueError(f"process {shard} of {shards} got no examples from a source of "
                         f"{len(source)} examples")
    if shuffle:
        ds = ds.shuffle(seed)  # grain reseeds per epoch after repeat()
    ds = ds.repeat(num_epochs)
    eos = [vocab.eos_id] if add_eos else []
    pattern = compile_loss_regex(loss_regex) if loss_regex else None

    def tokenize(example: dict[str, Any]) -> dict[str, np.ndarray] | None:
        text = get_text(example, text_field)
        if pattern is None:
            ids = vocab.encode(text) + eos
            return {"targets": np.asarray(ids, dtype=np.int32)} if ids else None
        ids, weights = _encode_weighted(text, pattern, vocab)
        ids, weights = ids + eos, weights + [0.0] * len(eos)
        if not ids:
            return None
        return {"targets": np.asarray(ids, np.int32), "loss_weights": np.asarray(weights, np.float32)}

    it = ds.map(tokenize).to_iter_dataset(read_options or READ_OPTIONS)  # drops None (empty doc)
    lengths = {"targets": seq_len} if pattern is None else {"targets": seq_len,
                                                             "loss_weights": seq_len}
    it = grain.experimental.ConcatThenSplitIterDataset(it, length_struct=lengths)
    it = it.batch(batch_size // shards, drop_remainder=True)
    return _JsonStateIterDataset(it.map(lambda b: _finalize(b, vocab.bos_id, vocab.pad_id)))


def compile_loss_regex(loss_regex: str) -> re.Pattern:
    """The compiled `data.loss_regex`, or a ValueError that names it."""
    try:
        return re.compile(loss_regex)
    except re.error as e:
        raise ValueError(f"data.loss_regex {loss_regex!r} is not a valid regular expression: {e}") from e


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


class _JsonStateIterator(grain.DatasetIterator):
    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._parent)

    def get_state(self) -> dict[str, Any]:
        return iterator_state_to_json(self._parent.get_state())

    def set_state(self, state: dict[str, Any]) -> None:
        self._parent.set_state(iterator_state_from_json(state))


class _JsonStateIterDataset(grain.IterDataset):
    """Gives iterators a JSON-safe state, so any JSON checkpointer resumes exactly."""

    def __iter__(self) -> _JsonStateIterator:
        return _JsonStateIterator(self._parent.__iter__())


def iterator_state_to_json(state: Any) -> Any:
    """grain iterator state -> JSON-safe value, with tuples tagged.

    Needed because ConcatThenSplit's state holds tuples ((-1, -1) = "no remainder"); after a plain
    JSON round trip they come back as lists, and set_state then silently skips a document.
    """
    if isinstance(state, tuple):
        return {_TUPLE: [iterator_state_to_json(v) for v in state]}
    if isinstance(state, list):
        return [iterator_state_to_json(v) for v in state]
    if isinstance(state, dict):
        if not all(isinstance(k, str) for k in state):
            raise TypeError(f"iterator state has non-string keys {list(state)}; cannot be JSON")
        return {k: iterator_state_to_json(v) for k, v in state.items()}
    if isinstance(state, np.generic):
        return state.item()
    if state is None or isinstance(state, (str, int, float, bool)):
        return state
    raise TypeError(f"iterator state holds a {type(state).__name__}, which JSON cannot store")


def iterator_state_from_json(value: Any) -> Any:
    """Inverse of iterator_state_to_json (values that were never tagged pass through)."""
    if isinstance(value, dict):
        if set(value) == {_TUPLE}:
            return tuple(iterator_state_from_json(v) for v in value[_TUPLE])
        return {k: iterator_state_from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [iterator_state_from_json(v) for v in value]
    return value
