"""Input on several CPU cores: this process's lanes split over worker processes.

Each lane is an independent, deterministic stream (`common.data.lanes`), so N workers that
each build a contiguous block of this process's lanes produce, concatenated, exactly the
batch one process would: same rows, same order, same data position. Workers run ahead by
`prefetch` batches and send each batch with their lanes' states after it; the position a
checkpoint saves is the one of the last batch handed to the trainer, not of what the workers
have prefetched.

Workers are spawned, not forked: ArrayRecord's readers (TFDS sources) crash in a forked
child once the parent has read through them. The pipeline's recipe, `make(lanes)` with its
closures, source and tokenizer, travels by cloudpickle (a TFDS source pickles as its file
paths; an in-memory file source as its lines). A worker imports the library but never
starts a JAX backend: it touches only NumPy and the tokenizer.

`data.num_workers` (0: build rows in the training process) selects it for training input.
"""

from __future__ import annotations

import multiprocessing
import queue as queue_lib
from typing import Any, Callable

import cloudpickle
import numpy as np

from common.data.lanes import LaneIterator, owned_lanes

_DONE = "done"


def split_lanes(lanes: range, num_workers: int) -> list[range]:
  """`lanes` as at most `num_workers` contiguous, non-empty, near-equal blocks."""
  n = min(num_workers, len(lanes))
  bounds = [lanes.start + len(lanes) * i // n for i in range(n + 1)]
  return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def _work(recipe: bytes, lanes: range, state: dict | None, queue: Any) -> None:
  """A worker's life: build its block of lanes from the recipe, resume, send batches."""
  try:
    iterator = cloudpickle.loads(recipe)(lanes)
    if state is not None:
      iterator.set_state(state)
    for batch in iterator:
      queue.put((batch, iterator.get_state()))
    queue.put(_DONE)
  except Exception as e:  # pylint: disable=broad-except
    queue.put(("error", f"{type(e).__name__}: {e}"))


class WorkerIterator:
  """A LaneIterator's batches built by worker processes (see module docstring); the same
  `get_state`/`set_state` contract."""

  def __init__(self, make: Callable[[range], LaneIterator], lanes: range, num_workers: int,
               *, prefetch: int = 4):
    self.blocks = split_lanes(lanes, num_workers)
    self.recipe = cloudpickle.dumps(make)
    self.prefetch = prefetch
    # The start position, from iterators built here only for their state (cheap: no data
    # is read until a batch is asked for).
    self._parts = [make(block) for block in self.blocks]
    self._resume: dict | None = None
    self._state = self._merge([p.get_state() for p in self._parts])
    self._procs: list[Any] = []
    self._queues: list[Any] = []

  @staticmethod
  def _merge(states: list[dict]) -> dict:
    merged = dict(states[0])
    merged["lanes"] = {k: v for s in states for k, v in s["lanes"].items()}
    return merged

  def _start(self) -> None:
    ctx = multiprocessing.get_context("spawn")
    for block in self.blocks:
      queue = ctx.Queue(maxsize=self.prefetch)
      proc = ctx.Process(target=_work, args=(self.recipe, block, self._resume, queue),
                         daemon=True)
      proc.start()
      self._procs.append(proc)
      self._queues.append(queue)

  def __iter__(self) -> "WorkerIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if not self._procs:
      self._start()
    got = [self._get(i) for i in range(len(self._queues))]
    for g in got:
      if isinstance(g, tuple) and g[0] == "error":
        self.close()
        raise RuntimeError(f"input worker failed: {g[1]}")
    if any(g == _DONE for g in got):
      self.close()
      raise StopIteration
    self._state = self._merge([state for _, state in got])
    return {k: np.concatenate([batch[k] for batch, _ in got]) for k in got[0][0]}

  def _get(self, i: int) -> Any:
    """Worker i's next message; a worker that died (e.g. killed for memory) is an error, not
    a hang."""
    while True:
      try:
        return self._queues[i].get(timeout=5.0)
      except queue_lib.Empty:
        if not self._procs[i].is_alive():
          code = self._procs[i].exitcode
          self.close()
          raise RuntimeError(f"input worker {i} exited (status {code}) without a batch") from None

  def get_state(self) -> dict:
    return self._state

  def set_state(self, state: dict) -> None:
    """Before the first batch (a resume); workers start from it when first asked."""
    if self._procs:
      raise RuntimeError("set_state after the workers started")
    for part in self._parts:
      part.set_state(state)  # checks it here, in the training process: one clear error
    self._resume = state
    self._state = self._merge([p.get_state() for p in self._parts])

  def close(self) -> None:
    for proc in self._procs:
      proc.kill()
      proc.join()
    self._procs, self._queues = [], []

  def __del__(self) -> None:
    self.close()


def parallel(make: Callable[[range], LaneIterator], batch_size: int, num_workers: int
             ) -> LaneIterator | WorkerIterator:
  """This process's rows of each global batch of `batch_size`, built by `make(lanes)` in
  this process (num_workers 0) or in `num_workers` worker processes."""
  lanes = owned_lanes(batch_size)
  if num_workers < 1:
    return make(lanes)
  return WorkerIterator(make, lanes, num_workers)
