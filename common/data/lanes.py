"""Input order as a function of (seed, step): row r of every global batch is *lane* r.

A lane is a deterministic stream of examples: the epoch-shuffled dataset, repeated, dealt
round-robin over the B rows of the global batch (lane r takes stream positions r, r + B,
r + 2B, ...), turned into fixed-length rows by a row builder (`common.data.rows`: concatenate-and-split,
first-fit packing, or one example per row). So:

  * the global batch at step s is the same rows, in the same order, for any number of
    processes and any mesh; each process builds only its own rows (lanes [p B/P, (p+1) B/P)),
    so the input cost per host falls as hosts are added;
  * every example of an epoch is in exactly one lane's stream;
  * the data position is the lanes' states (JSON, keyed by lane), so a run saved by N
    processes resumes on M processes exactly (`common.data_state` merges the files).

Examples are made by `example_fn(raw_example, key)`, where `key` = (epoch, index) seeds any
randomness, so an example is the same whenever (and wherever) it is made again.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable

import jax
import numpy as np

from common.data.rows import Example
from common.data_state import DataStateError

ExampleFn = Callable[[dict[str, Any], tuple[int, int]], Example | None]
STATE_VERSION = 1
RESTART_FLAG = "--config.data.restart=True"


# ------------------------------------------------------------------------- shuffled order


def _mix(x: np.ndarray, key: int) -> np.ndarray:
  """A 64-bit mixing function (splitmix64's finaliser) of uint64 arrays."""
  x = (x + np.uint64(key)) * np.uint64(0x9E3779B97F4A7C15)
  x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return x ^ (x >> np.uint64(31))


class Permutation:
  """A pseudo-random permutation of range(n) keyed by (seed, epoch), computed per index
  (a 4-round Feistel network with cycle walking): no O(n) table, however large the dataset."""

  def __init__(self, n: int, seed: int, epoch: int):
    self.n = n
    self.half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
    base = np.asarray([(seed & 0xFFFFFFFF) << 32 | (epoch & 0xFFFFFFFF)], np.uint64)
    with np.errstate(over="ignore"):
      self.keys = [int(_mix(base, r)[0]) for r in range(4)]

  def _round(self, x: np.ndarray) -> np.ndarray:
    mask = np.uint64((1 << self.half) - 1)
    left, right = x >> np.uint64(self.half), x & mask
    for k in self.keys:
      left, right = right, left ^ (_mix(right, k) & mask)
    return (left << np.uint64(self.half)) | right

  def __call__(self, j: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
      y = self._round(np.asarray(j, np.uint64))
      while (out := y >= self.n).any():  # cycle-walk back into range(n)
        y[out] = self._round(y[out])
    return y.astype(np.int64)


class Order:
  """Stream position g -> (epoch, dataset index): epochs of `n` examples, shuffled or not."""

  def __init__(self, n: int, seed: int, shuffle: bool, num_epochs: int | None):
    self.n, self.seed, self.shuffle, self.num_epochs = n, seed, shuffle, num_epochs
    self._perm: tuple[int, Permutation] | None = None

  def end(self) -> int | None:
    return None if self.num_epochs is None else self.num_epochs * self.n

  def lookup(self, g: int) -> tuple[int, int]:
    epoch, j = divmod(g, self.n)
    if not self.shuffle:
      return epoch, j
    if self._perm is None or self._perm[0] != epoch:
      self._perm = (epoch, Permutation(self.n, self.seed, epoch))
    return epoch, int(self._perm[1](np.asarray([j]))[0])


# ------------------------------------------------------------------------- the iterator


@dataclasses.dataclass(frozen=True)
class Identity:
  """What a saved data position is a position in: resuming in anything else is not exact."""
  dataset: str
  n: int
  global_batch: int
  seed: int
  shuffle: bool

  def check(self, saved: dict) -> None:
    mine = dataclasses.asdict(self)
    diffs = [f"{k} {saved.get(k)!r} (this run: {v!r})" for k, v in mine.items()
             if saved.get(k) != v]
    if diffs:
      raise DataStateError(f"the checkpoint's data position is for another input stream "
                           f"({'; '.join(diffs)}); {RESTART_FLAG} starts this run's data "
                           "from its beginning instead")


def owned_lanes(global_batch: int, process_index: int | None = None,
                process_count: int | None = None) -> range:
  """The rows of each global batch this process builds (its slice of the batch)."""
  p = jax.process_index() if process_index is None else process_index
  n = jax.process_count() if process_count is None else process_count
  if global_batch % n:
    raise ValueError(f"global batch_size {global_batch} is not divisible by the {n} JAX "
                     f"processes; use a multiple of {n}")
  per = global_batch // n
  return range(p * per, (p + 1) * per)


class LaneIterator:
  """This process's rows of every global batch; `get_state`/`set_state` for checkpoints."""

  def __init__(self, source: Any, example_fn: ExampleFn, builder: Any,
               finalize: Callable[[Example, np.ndarray], Example], *, identity: Identity,
               num_epochs: int | None, lanes: range, stop_when_exhausted: bool = False,
               max_steps: int | None = None):
    if len(source) == 0:
      raise ValueError(f"dataset {identity.dataset!r} has no examples")
    self.source, self.example_fn, self.builder, self.finalize = (source, example_fn, builder,
                                                                 finalize)
    self.identity, self.lanes = identity, lanes
    self.order = Order(len(source), identity.seed, identity.shuffle, num_epochs)
    self.step = 0
    self.states = {r: builder.new_state(r) for r in lanes}
    # Finite data: padding rows once a lane runs out, so every process draws the same number
    # of batches (evaluation draws a fixed count); single-process readers may stop instead.
    self.stop_when_exhausted, self.max_steps = stop_when_exhausted, max_steps
    self._cache: dict[int, Example | None] = {}
    self._cache_size = max(4096, 64 * len(lanes))

  def __iter__(self) -> "LaneIterator":
    return self

  def _fetch(self, g: int) -> Example | None:
    if g not in self._cache:
      if len(self._cache) >= self._cache_size:
        self._cache.pop(next(iter(self._cache)))
      epoch, index = self.order.lookup(g)
      self._cache[g] = self.example_fn(self.source[index], (epoch, index))
    return self._cache[g]

  def __next__(self) -> Example:
    B, end = self.identity.global_batch, self.order.end()
    if self.max_steps is not None and self.step >= self.max_steps:
      raise StopIteration
    if self.stop_when_exhausted and all(self.builder.exhausted(self.states[r], end)
                                        for r in self.lanes):
      raise StopIteration
    rows = [self.builder.row(self.states[r], self._fetch, B, end) for r in self.lanes]
    batch = {k: np.stack([row[k] for row in rows]) for k in rows[0]}
    row_ids = self.step * B + np.asarray(self.lanes, np.int64)
    self.step += 1
    return self.finalize(batch, row_ids)

  def get_state(self) -> dict:
    """A snapshot (JSON-safe copy): the iterator goes on after a checkpoint is started."""
    return json.loads(json.dumps(dataclasses.asdict(self.identity) | {
        "version": STATE_VERSION, "step": self.step,
        "lanes": {str(r): s for r, s in self.states.items()}}))

  def set_state(self, state: dict) -> None:
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
      raise DataStateError("the checkpoint's data position was written by another version of "
                           f"the input pipeline; {RESTART_FLAG} starts the data from its "
                           "beginning instead")
    self.identity.check(state)
    missing = [r for r in self.lanes if str(r) not in state["lanes"]]
    if missing:
      raise DataStateError(f"the checkpoint holds no position for rows {missing[:4]} of the "
                           "global batch")
    self.step = state["step"]
    self.states = {r: json.loads(json.dumps(state["lanes"][str(r)])) for r in self.lanes}
    self._cache.clear()
