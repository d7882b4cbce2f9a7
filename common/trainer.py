"""The training loop shared by every model family: start or resume a run in a work dir, step,
and drive the hooks (`common.hooks`). The state it steps is `common.train_state`'s, the steps
are `common.steps`'; the same code runs on one CPU, fake CPU devices, a multi-GPU host or a
TPU pod slice.

A start that fails (bad data, a compile error) before the first checkpoint leaves the work dir
as it found it; every check that config and data allow runs before anything is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from typing import Any, Callable, Iterator

from ml_collections import ConfigDict

from common import cli
from common import config as config_lib
from common.checkpoint import DIVERGED_DIR, Checkpointer
from common.checkpoint_reader import read_meta
from common.hooks import (CheckpointHook, Divergence, DivergenceGuard, EvalHook, ProgressHook,
                          Run)
from common.metrics import MetricsWriter, peak_flops
from common.partitioning import Partitioner
from common.steps import make_train_step
from common.train_state import (Model, Setup, check_config, check_init_from, make_setup,
                                start_state)

# What a run writes into its work dir (a failed start removes those it created).
RUN_FILES = ("config.json", "vocab", "metrics.jsonl", "tensorboard", "checkpoints",
             "log.txt", "labels.json", "results.json")


@dataclasses.dataclass
class TrainResult:
  state: dict
  setup: Setup
  history: list[dict]           # every step's metrics (host floats)
  eval_metrics: dict[str, float]
  start_step: int


def check_writable(workdir: str) -> None:
  """The work dir (or the nearest existing parent it will be created in) accepts files."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ValueError(f"--workdir {workdir} is a file, not a directory")
  path = workdir
  while not os.path.exists(path):
    path = os.path.dirname(path)
  try:
    with tempfile.TemporaryFile(dir=path):  # a real write: permissions, read-only mounts, root
      pass
  except OSError as e:
    raise ValueError(f"--workdir {workdir}: {path} is not writable ({e.strerror})") from None


class _StartGuard:
  """Remembers which run files existed, to remove the ones a failed start created."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.dir_existed = os.path.isdir(workdir)
    self.existed = {n for n in RUN_FILES if os.path.exists(os.path.join(workdir, n))}

  def rollback(self) -> None:
    for name in set(RUN_FILES) - self.existed:
      path = os.path.join(self.workdir, name)
      if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
      elif os.path.exists(path):
        os.remove(path)
    if not self.dir_existed and os.path.isdir(self.workdir) and not os.listdir(self.workdir):
      os.rmdir(self.workdir)


def _first_then(first: dict, rest: Iterator[dict]) -> Iterator[dict]:
  yield first
  yield from rest


def train(model: Model, cfg: ConfigDict, workdir: str, *,
          make_train_iter: Callable[[], Any],
          make_eval_iter: Callable[[], Iterator[dict]] | None,
          init_from: str | None = None,
          partitioner: Partitioner | None = None,
          on_start: Callable[[], None] | None = None,
          extra_eval: Callable[[int, dict, Setup], dict[str, float]] | None = None,
          start_metrics: dict[str, float] | None = None) -> TrainResult:
  """Runs (or resumes) training in `workdir` until `cfg.train.num_steps`.

  `make_train_iter()` returns an iterator of host-local batches with get_state/set_state; its
  state is checkpointed with the model, so a resumed run continues on exactly the data it
  would have seen. `init_from` loads params only (fine-tuning) when the work dir has no
  checkpoint yet; steps then count from 0. `on_start` runs once the data has produced its
  first batch, before anything is written (e.g. to record config and tokenizer).
  `extra_eval(step, state, setup)` adds task metrics (accuracy/F1, ROUGE, ...) at each eval.
  `start_metrics` (e.g. data/skipped_records) are written once, at the start step.
  """
  t = cfg.train
  config_lib.validate(cfg)
  partitioner = partitioner or Partitioner.from_config(cfg.mesh)
  check_config(cfg, partitioner)
  setup = make_setup(model, cfg, partitioner)
  if setup.partitioner.replicated:  # small ones only: larger ones were an error
    print("note: sharded fewer ways than the rules say (small parameters): "
          + "; ".join(str(r) for r in setup.partitioner.replicated[:4]), flush=True)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=t.keep_checkpoints,
                      async_save=t.async_checkpoint, prune_existing=t.prune_checkpoints)
  identity = model.identity()
  ckpt.check_identity(identity)
  if init_from and ckpt.latest_step() is None:
    check_init_from(init_from, model)
  check_writable(workdir)
  guard = _StartGuard(workdir)
  writer, run, resumed = None, None, None
  stack = contextlib.ExitStack()
  try:
    train_iter = make_train_iter()
    state, resumed = start_state(setup, ckpt, train_iter, init_from=init_from,
                                 restore_data=not cfg.data.get("restart", False))
    start = resumed or 0
    batches = train_iter
    if start < t.num_steps:  # the first batch checks the data before anything is written
      batches = _first_then(next(train_iter), train_iter)
    if on_start is not None:
      on_start()
    stack.enter_context(cli.log_to_file(workdir))
    writer = MetricsWriter(workdir, resume_step=start)
    if start_metrics and resumed is None:
      writer.write(start, start_metrics)
    best = (read_meta(os.path.join(ckpt.directory, str(resumed))).get("best_loss_median")
            if resumed is not None else None)
    run = Run(setup, state, train_iter, writer, start, t.num_steps, resumed,
              guard=DivergenceGuard(t.spike_factor, best_median=best))
    peak = peak_flops(cfg.model.get("dtype", "float32"), t.peak_flops_per_device)
    hooks = [ProgressHook(t.log_every, model.flops_per_token(), peak, model.unit),
             CheckpointHook(ckpt, t.checkpoint_every, identity)]
    if make_eval_iter is not None:
      hooks.append(EvalHook(t.eval_every, t.eval_batches, make_eval_iter, extra_eval))
    train_step = make_train_step(setup)
    p = setup.partitioner
    for step in range(start, t.num_steps):
      run.state, metrics = train_step(run.state, p.global_batch(next(batches)))
      run.pending.append((step + 1, metrics))
      for hook in hooks:
        hook.after_step(run, step + 1)
    run.flush()
    for hook in hooks:
      hook.end(run)
    ckpt.wait()
  except Divergence as e:
    late = [s for s in ckpt.steps() if run is not None and s > (run.last_checkpoint or 0)]
    for step in late:
      ckpt.move_aside(step, DIVERGED_DIR)
    if late:
      raise Divergence(f"{e}; checkpoints {late}, written while the loss rose, were moved to "
                       f"{os.path.join(ckpt.directory, DIVERGED_DIR)}, so a rerun resumes from "
                       f"{run.last_checkpoint}") from None
    raise
  except BaseException:
    if resumed is None and not ckpt.steps():  # nothing saved yet: leave the work dir as found
      ckpt.close()
      if writer is not None:
        writer.close()
        writer = None
      guard.rollback()
    raise
  finally:
    ckpt.close()
    if writer is not None:
      writer.close()
    stack.close()
  return TrainResult(run.state, setup, run.history, run.eval_metrics, start)
