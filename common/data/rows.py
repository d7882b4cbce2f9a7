"""Row builders: how a lane turns its stream of examples into fixed-length rows.

ConcatSplit concatenates examples and cuts rows (GPT, T5 span corruption: no token dropped),
FirstFit packs whole examples into rows first-fit (BERT, T5 text-to-text), OnePerRow pads one
example per row (classification). Each keeps its position in a small JSON-able state, so a
lane resumes exactly (`common.data.lanes.LaneIterator`).
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

Example = dict[str, np.ndarray]


class Fetch(Protocol):
  def __call__(self, g: int) -> Example | None: ...


def _dtype(key: str, dtypes: dict[str, Any] | None) -> Any:
  if dtypes and key in dtypes:
    return dtypes[key]
  return np.float32 if key.endswith("weights") else np.int32


def empty_row(lengths: dict[str, int], dtypes: dict[str, Any] | None = None) -> Example:
  """A padding row: every feature 0, segment id 0 (no loss, no attention). Features are int32
  (float32 for *weights) unless `dtypes` says otherwise."""
  row = {k: np.zeros(n, _dtype(k, dtypes)) for k, n in lengths.items()}
  row.update({f"{k}_segment_ids": np.zeros(n, np.int32) for k, n in lengths.items()})
  row.update({f"{k}_positions": np.zeros(n, np.int32) for k, n in lengths.items()})
  return row


class ConcatSplit:
  """Examples concatenated and cut into rows of `length` (no token dropped): a long example
  continues in the next row as a new segment. Example features: 1-D arrays of equal length
  (e.g. "targets" and "loss_weights"); rows add `<first key>_segment_ids` and `_positions`."""

  def __init__(self, length: int, keys: Sequence[str]):
    self.length, self.keys = length, tuple(keys)

  def new_state(self, lane: int) -> dict:
    return {"g": lane, "offset": 0}

  def exhausted(self, state: dict, end: int | None) -> bool:
    return end is not None and state["g"] >= end

  def row(self, state: dict, fetch: Fetch, stride: int, end: int | None) -> Example:
    out = {k: np.zeros(self.length, np.float32 if k.endswith("weights") else np.int32)
           for k in self.keys}
    seg = np.zeros(self.length, np.int32)
    pos = np.zeros(self.length, np.int32)
    filled, segment = 0, 0
    while filled < self.length and (end is None or state["g"] < end):
      ex = fetch(state["g"])
      n = 0 if ex is None else len(ex[self.keys[0]])
      take = min(n - state["offset"], self.length - filled)
      if take > 0:
        segment += 1
        for k in self.keys:
          out[k][filled:filled + take] = ex[k][state["offset"]:state["offset"] + take]
        seg[filled:filled + take] = segment
        pos[filled:filled + take] = np.arange(take)
        filled += take
        state["offset"] += take
      if state["offset"] >= n:
        state["g"] += stride
        state["offset"] = 0
    key = self.keys[0]
    return out | {f"{key}_segment_ids": seg, f"{key}_positions": pos}


class OnePerRow:
  """One example per row, right-padded to `lengths` (a feature per key), segment id 1."""

  def __init__(self, lengths: dict[str, int], dtypes: dict[str, Any] | None = None):
    self.lengths, self.dtypes = lengths, dtypes

  def new_state(self, lane: int) -> dict:
    return {"g": lane}

  def exhausted(self, state: dict, end: int | None) -> bool:
    return end is not None and state["g"] >= end

  def row(self, state: dict, fetch: Fetch, stride: int, end: int | None) -> Example:
    row = empty_row(self.lengths, self.dtypes)
    while end is None or state["g"] < end:
      ex = fetch(state["g"])
      state["g"] += stride
      if ex is not None:
        _place(row, ex, self.lengths, segment=1)
        break
    return row


class FirstFit:
  """Several examples per row, first-fit into `bins` open rows per lane; when an example fits
  none, the fullest row is emitted and a new one opened. Each example keeps its own segment id
  and positions."""

  def __init__(self, lengths: dict[str, int], bins: int = 4):
    self.lengths, self.bins = lengths, bins

  def new_state(self, lane: int) -> dict:
    return {"g": lane, "bins": [[] for _ in range(self.bins)]}

  def exhausted(self, state: dict, end: int | None) -> bool:
    return end is not None and state["g"] >= end and not any(state["bins"])

  def _size(self, ex: Example) -> dict[str, int]:
    sizes = {k: len(ex[k]) for k in self.lengths}
    too_long = [k for k, n in sizes.items() if n > self.lengths[k]]
    if too_long:
      raise ValueError(f"an example's {too_long[0]} has {sizes[too_long[0]]} tokens, more "
                       f"than the row's {self.lengths[too_long[0]]}")
    return sizes

  def row(self, state: dict, fetch: Fetch, stride: int, end: int | None) -> Example:
    fill = lambda b: {k: sum(self._size(fetch(g))[k] for g in b) for k in self.lengths}
    while end is None or state["g"] < end:
      g = state["g"]
      ex = fetch(g)
      if ex is None:
        state["g"] += stride
        continue
      size = self._size(ex)
      for b in state["bins"]:
        used = fill(b)
        if all(used[k] + size[k] <= self.lengths[k] for k in self.lengths):
          b.append(g)
          state["g"] += stride
          break
      else:
        full = max(range(self.bins), key=lambda i: (sum(fill(state["bins"][i]).values()), -i))
        emitted, state["bins"][full] = state["bins"][full], []
        return self._pack(emitted, fetch)
    for i, b in enumerate(state["bins"]):  # data exhausted: flush the open rows
      if b:
        state["bins"][i] = []
        return self._pack(b, fetch)
    return empty_row(self.lengths)

  def _pack(self, positions: list[int], fetch: Fetch) -> Example:
    row = empty_row(self.lengths)
    offsets = dict.fromkeys(self.lengths, 0)
    for segment, g in enumerate(positions, 1):
      offsets = _place(row, fetch(g), self.lengths, segment=segment, offsets=offsets)
    return row


def _place(row: Example, ex: Example, lengths: dict[str, int], *, segment: int,
           offsets: dict[str, int] | None = None) -> dict[str, int]:
  offsets = dict(offsets or dict.fromkeys(lengths, 0))
  for k in lengths:
    a, n = offsets[k], len(ex[k])
    row[k][a:a + n] = ex[k]
    row[f"{k}_segment_ids"][a:a + n] = segment
    row[f"{k}_positions"][a:a + n] = np.arange(n)
    offsets[k] = a + n
  return offsets
