"""What the training loop does besides stepping, one hook each: progress lines (throughput,
MFU, ETA), the divergence guard, checkpoints and evaluation.

Hooks see the live `Run`. Per-step metrics stay on the device until a hook needs them
(`Run.flush`), so the loop never waits for a step to finish unless it logs, checkpoints or
evaluates; every flushed step passes the divergence guard first, so no checkpoint is ever
written after a bad step.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np

from common.checkpoint import Checkpointer
from common.metrics import MetricsWriter
from common.steps import evaluate, make_eval_step
from common.train_state import Setup


class Divergence(FloatingPointError):
  """Training diverged; the message names the checkpoint to resume from."""


@dataclasses.dataclass
class Run:
  """The training run the loop drives and the hooks observe."""
  setup: Setup
  state: dict
  train_iter: Any
  writer: MetricsWriter
  start: int
  num_steps: int
  last_checkpoint: int | None  # the last healthy one (what a divergence message names)
  history: list[dict] = dataclasses.field(default_factory=list)
  eval_metrics: dict[str, float] = dataclasses.field(default_factory=dict)
  pending: list[tuple[int, dict]] = dataclasses.field(default_factory=list)
  guard: "DivergenceGuard | None" = None

  def flush(self) -> list[tuple[int, dict]]:
    """Pending device metrics -> host floats, checked by the guard, appended to history."""
    host = [(s, {k: float(v) for k, v in jax.device_get(m).items()}) for s, m in self.pending]
    self.pending.clear()
    for step, m in host:
      if self.guard is not None:
        self.guard.check(step, m, self.last_checkpoint)
      self.history.append(m | {"step": step})
    return host


class Hook:
  """Called after every step (and once at the end of the loop)."""

  def after_step(self, run: Run, step: int) -> None:
    del run, step

  def end(self, run: Run) -> None:
    del run


def _due(step: int, every: int, last: int) -> bool:
  return step % every == 0 or step == last


class DivergenceGuard:
  """Stops at the first non-finite loss or gradient norm, or at a loss above `spike_factor`
  x the median of the last `window` steps (after `min_history` of them), before any further
  checkpoint.

  Divergence often creeps before it spikes, so the checkpoint it names is the last one written
  while training was *healthy* (the median of the last `min_history` losses within
  `healthy_factor` of the lowest such median so far), kept from rotation for that reason.
  """

  def __init__(self, spike_factor: float, window: int = 100, min_history: int = 10,
               healthy_factor: float = 1.25, best_median: float | None = None):
    """`best_median`: the lowest median of the run so far, kept in checkpoint meta so a
    resumed run still knows what healthy looked like."""
    self.spike_factor, self.window, self.min_history = spike_factor, window, min_history
    self.healthy_factor = healthy_factor
    self.losses: list[float] = []
    self.best_median = float("inf") if best_median is None else best_median

  def healthy(self) -> bool:
    """Whether the latest steps look like training, not the start of a divergence."""
    recent = self.losses[-self.min_history:]
    if not recent or math.isinf(self.best_median):
      return True
    return statistics.median(recent) <= self.healthy_factor * self.best_median

  def check(self, step: int, m: dict[str, float], last_checkpoint: int | None) -> None:
    loss, gnorm = m["loss"], m["grad_norm"]
    why = None
    if not (np.isfinite(loss) and np.isfinite(gnorm)):
      why = "non-finite training loss"
    elif (self.spike_factor > 0 and len(self.losses) >= self.min_history
          and loss > self.spike_factor * statistics.median(self.losses[-self.window:])):
      why = (f"loss spike ({loss:.4g} > {self.spike_factor:g} x the median "
             f"{statistics.median(self.losses[-self.window:]):.4g} of the last "
             f"{min(len(self.losses), self.window)} steps)")
    if why:
      resume = (f"resume from checkpoint {last_checkpoint} (the last one written while the "
                "loss was healthy)" if last_checkpoint is not None else
                "no checkpoint was written before it")
      raise Divergence(
          f"{why} at step {step} (loss={loss:.4g}, grad_norm={gnorm:.4g}, learning_rate="
          f"{m['learning_rate']:.3g}); stopped before writing another checkpoint: {resume}. "
          "Lower optimizer.learning_rate, raise optimizer.warmup_steps or set "
          "optimizer.clip_norm (train.spike_factor=0 turns the spike test off)")
    self.losses.append(loss)
    if len(self.losses) >= self.min_history:
      self.best_median = min(self.best_median,
                             statistics.median(self.losses[-self.min_history:]))


class ProgressHook(Hook):
  """Every `every` steps: loss, learning rate, throughput, MFU and ETA to the console,
  metrics.jsonl and TensorBoard."""

  def __init__(self, every: int, flops_per_unit: float, peak_flops: float, unit: str):
    self.every, self.flops, self.peak, self.unit = every, flops_per_unit, peak_flops, unit
    self.t0, self.units, self.from_step = time.time(), 0.0, None

  def after_step(self, run: Run, step: int) -> None:
    if self.from_step is None:
      self.from_step = run.start
    if not _due(step, self.every, run.num_steps):
      return
    host = run.flush()
    self.units += sum(m["tokens"] for _, m in host)
    dt = time.time() - self.t0
    rate = self.units / max(dt, 1e-9)
    mfu = rate * self.flops / self.peak if self.peak else float("nan")
    eta = (run.num_steps - step) * dt / max(step - self.from_step, 1)
    last = host[-1][1]
    run.writer.write(step, {"train/loss": last["loss"], "train/accuracy": last["correct"],
                            "train/grad_norm": last["grad_norm"],
                            "train/learning_rate": last["learning_rate"],
                            "train/tokens_per_sec": rate, "train/mfu": mfu},
                     console=f"step {step:6d} | loss {last['loss']:.4f} | "
                             f"lr {last['learning_rate']:.2e} | {rate:,.0f} {self.unit}/s | "
                             f"MFU {mfu:.1%} | ETA {eta / 60:.1f} min")
    self.t0, self.units, self.from_step = time.time(), 0.0, step


class CheckpointHook(Hook):
  """Every `every` steps (and at the end) saves state and data position; the steps since the
  last save pass the divergence guard first."""

  def __init__(self, ckpt: Checkpointer, every: int, identity: dict):
    self.ckpt, self.every, self.identity = ckpt, every, identity

  def after_step(self, run: Run, step: int) -> None:
    if _due(step, self.every, run.num_steps):
      run.flush()
      health = {} if run.guard is None else {"best_loss_median": run.guard.best_median}
      self.ckpt.save(step, run.state, run.train_iter, self.identity,
                     {k: v for k, v in health.items() if math.isfinite(v)})
      if run.guard is None or run.guard.healthy():
        run.last_checkpoint = step
        self.ckpt.keep.protected = {step}


class EvalHook(Hook):
  """Every `every` steps (and at the end): loss/perplexity/accuracy over `num_batches`
  validation batches, plus task metrics from `extra_eval(step, state, setup)`."""

  def __init__(self, every: int, num_batches: int, make_iter: Callable[[], Iterator[dict]],
               extra_eval: Callable[[int, dict, Setup], dict[str, float]] | None = None):
    self.every, self.num_batches, self.make_iter = every, num_batches, make_iter
    self.extra_eval = extra_eval
    self.step_fn = None

  def run_eval(self, run: Run, step: int) -> None:
    if self.step_fn is None:
      self.step_fn = make_eval_step(run.setup)
    out = evaluate(self.step_fn, run.state["params"], self.make_iter(), self.num_batches)
    if self.extra_eval is not None:
      out.update(self.extra_eval(step, run.state, run.setup))
    run.writer.write(step, {f"eval/{k}": v for k, v in out.items()},
                     console=f"step {step:6d} | eval loss {out['loss']:.4f} | "
                             f"ppl {out.get('perplexity', float('nan')):.2f} | "
                             f"acc {out.get('correct', float('nan')):.4f}")
    run.eval_metrics = out

  def after_step(self, run: Run, step: int) -> None:
    if _due(step, self.every, run.num_steps):
      self.run_eval(run, step)

  def end(self, run: Run) -> None:
    if not run.eval_metrics and run.start >= run.num_steps:  # nothing left to train: report
      self.run_eval(run, run.start)
