"""Sharded training shared by every model family.

The train state is a plain pytree {step, params, opt_state}; params are the NNX network's
`nnx.Param`s as a pure dict, merged back into the network inside the jitted step (split once,
merge in the pure function: no object-graph traversal per step). The state is created
directly with its shardings (never materialised whole on one device), the step is
`jax.jit` with explicit in/out shardings and a donated state, and the same code runs on one
CPU, fake CPU devices, a multi-GPU host or a TPU pod slice.

A model family plugs in through a `Model` (T5X's network/model split): it builds the network
and computes loss sums from a batch.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable, Iterator, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from common import sharding
from common.partitioning import PartitionedFunction, Partitioner, choose_fsdp_split
from common.checkpoint import Checkpointer, load_params, resolve_checkpoint
from common.metrics import MetricsWriter, peak_flops
from common.optim import make_optimizer, make_schedule


class Model(Protocol):
  """What the trainer needs from a model family. An optional `unit` attribute names what
  the progress line counts (default "tok"; a classifier's are examples, "ex")."""

  def make_network(self, rngs: nnx.Rngs) -> nnx.Module: ...

  def loss(self, network: nnx.Module, batch: dict[str, jax.Array], *,
           dropout_key: jax.Array | None) -> dict[str, jax.Array]:
    """Sums over the batch; must include `loss` and `weights` (the normaliser). Optional
    `input_tokens`: what throughput and MFU count (the units `flops_per_token` is per) when
    that differs from `weights`, e.g. a loss on part of each row only."""

  def flops_per_token(self) -> float: ...

  def identity(self) -> dict: ...


@dataclasses.dataclass
class Setup:
  """Everything derived from (model, config, partitioner) before any array is created."""
  model: Model
  cfg: ConfigDict
  partitioner: Partitioner
  graphdef: Any
  tx: optax.GradientTransformation
  abstract_state: dict
  state_specs: dict
  state_shardings: dict
  init_fn: Callable[[jax.Array], dict]

  def merge(self, params: Any) -> nnx.Module:
    return nnx.merge(self.graphdef, params)

  def abstract_batch(self, batch: dict[str, Any]) -> dict[str, jax.ShapeDtypeStruct]:
    """ShapeDtypeStructs of a global batch, sharded as `global_batch` shards it (lowering)."""
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                    sharding=self.partitioner.batch_sharding(len(v.shape)))
            for k, v in batch.items()}

  def abstract_train_state(self) -> dict:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        self.abstract_state, self.state_shardings)


def make_setup(model: Model, cfg: ConfigDict, partitioner: Partitioner) -> Setup:
  """Abstract network and optimizer state, laid out by `partitioner`. If the fsdp axis cannot
  shard every parameter as the rules say, it is split in two (`choose_fsdp_split`): the
  returned setup's partitioner is then a refinement of the one passed in."""
  with nnx.use_eager_sharding(False):
    abs_net = nnx.eval_shape(lambda: model.make_network(nnx.Rngs(params=0)))
  graphdef, abs_params, rest = nnx.split(abs_net, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise ValueError("networks must hold only nnx.Param state (dropout keys are passed per call)")
  param_specs = partitioner.param_specs(abs_params)
  if partitioner.replicated:
    split = choose_fsdp_split(partitioner, abs_params)
    if split != partitioner.fsdp_split:
      partitioner = partitioner.with_fsdp_split(split)
      param_specs = partitioner.param_specs(abs_params)
  partitioner.check_layout()
  tx = make_optimizer(cfg.optimizer, cfg.train.num_steps)

  def init_fn(key: jax.Array) -> dict:
    with nnx.use_eager_sharding(False):
      net = model.make_network(nnx.Rngs(params=key))
    params = nnx.to_pure_dict(nnx.split(net, nnx.Param)[1])
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  abstract = jax.eval_shape(init_fn, jax.random.key(0))
  specs = {"step": P(), "params": param_specs,
           "opt_state": sharding.opt_state_specs(abstract["opt_state"], abstract["params"],
                                                 param_specs)}
  shardings = partitioner.shardings(specs, abstract)
  return Setup(model, cfg, partitioner, graphdef, tx, abstract, specs, shardings, init_fn)


def init_state(setup: Setup) -> dict:
  """Initialises params and optimizer state directly into their shardings."""
  init = setup.partitioner.jit(setup.init_fn, out_shardings=setup.state_shardings)
  return init(jax.random.key(setup.cfg.seed))


def _split_microbatches(batch: dict, n: int) -> dict:
  """[B, ...] -> [n, B/n, ...] taking strided rows, so every microbatch stays spread over all
  data-parallel devices (contiguous blocks would put each microbatch on a few devices)."""
  def split(x):
    x = x.reshape((x.shape[0] // n, n) + x.shape[1:]).swapaxes(0, 1)
    return sharding.constrain(x, (None, "batch") + (None,) * (x.ndim - 2))
  return jax.tree.map(split, batch)


def make_train_step(setup: Setup) -> PartitionedFunction:
  """Jitted (state, batch) -> (state, metrics): grad accumulation, clipping, optimizer."""
  cfg, model = setup.cfg, setup.model
  accum = cfg.train.grad_accum_steps
  schedule = make_schedule(cfg.optimizer, cfg.train.num_steps)
  use_dropout = _has_dropout(cfg)

  def grads_and_sums(params, batch, key):
    def loss_fn(p):
      sums = model.loss(setup.merge(p), batch, dropout_key=key)
      return sums["loss"], sums
    return jax.grad(loss_fn, has_aux=True)(params)

  def step(state: dict, batch: dict) -> tuple[dict, dict]:
    params = state["params"]
    key = jax.random.fold_in(jax.random.key(cfg.seed), state["step"]) if use_dropout else None
    if accum == 1:
      grads, sums = grads_and_sums(params, batch, key)
    else:
      micro = _split_microbatches(batch, accum)
      keys = jax.random.split(key, accum) if key is not None else None

      def body(carry, xs):
        mb, k = xs
        g, s = grads_and_sums(params, mb, k)
        return jax.tree.map(jnp.add, carry, (g, s)), None

      zero = jax.eval_shape(grads_and_sums, params, jax.tree.map(lambda x: x[0], micro),
                            None if keys is None else keys[0])
      zero = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), zero)
      (grads, sums), _ = jax.lax.scan(body, zero, (micro, keys))
    denom = jnp.maximum(sums["weights"], 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = setup.tx.update(grads, state["opt_state"], params)
    new_state = {"step": state["step"] + 1, "params": optax.apply_updates(params, updates),
                 "opt_state": opt_state}
    metrics = {k: v / denom for k, v in sums.items() if k not in ("weights", "input_tokens")}
    metrics.update(tokens=sums.get("input_tokens", sums["weights"]),
                   grad_norm=optax.tree.norm(grads),
                   learning_rate=schedule(state["step"]))
    return new_state, metrics

  p = setup.partitioner
  return p.jit(step, in_shardings=(setup.state_shardings, p.batch_sharding()),
               out_shardings=(setup.state_shardings, p.replicated_sharding()),
               donate_argnums=(0,))


def make_eval_step(setup: Setup) -> PartitionedFunction:
  """Jitted (params, batch) -> loss sums (no dropout)."""
  def step(params, batch):
    return setup.model.loss(setup.merge(params), batch, dropout_key=None)

  p = setup.partitioner
  return p.jit(step, in_shardings=(setup.state_shardings["params"], p.batch_sharding()),
               out_shardings=p.replicated_sharding())


def _has_dropout(cfg: ConfigDict) -> bool:
  return any(v > 0 for k, v in cfg.model.items() if "dropout" in k and isinstance(v, float))


def evaluate(eval_step: PartitionedFunction, params: dict, batches: Iterator[dict],
             num_batches: int) -> dict[str, float]:
  """Summed metrics over `num_batches` batches, normalised by the summed weights."""
  totals: dict[str, float] = {}
  for _, local in zip(range(num_batches), batches):
    sums = jax.device_get(eval_step(params, eval_step.partitioner.global_batch(local)))
    for k, v in sums.items():
      totals[k] = totals.get(k, 0.0) + float(v)
  if not totals:
    raise ValueError("the evaluation split produced no batches (is it empty or smaller than "
                     "one batch?)")
  w = max(totals.pop("weights"), 1.0)
  totals.pop("input_tokens", None)
  out = {k: v / w for k, v in totals.items()}
  out["tokens"] = w
  if "loss" in out:
    out["perplexity"] = math.exp(min(out["loss"] - out.get("z_loss", 0.0), 50.0))
  return out


def check_config(cfg: ConfigDict, partitioner: Partitioner) -> None:
  """Up-front checks with one clear message each (before any compilation or I/O)."""
  t = cfg.train
  partitioner.check_batch(t.batch_size, "train.batch_size")
  if t.grad_accum_steps < 1:
    raise ValueError(f"train.grad_accum_steps={t.grad_accum_steps} must be >= 1")
  n_data = partitioner.num_data
  if t.batch_size % (t.grad_accum_steps * n_data):
    raise ValueError(f"train.batch_size={t.batch_size} must be divisible by grad_accum_steps x "
                     f"data axes = {t.grad_accum_steps} x {n_data}")
  if t.batch_size % partitioner.num_processes:
    raise ValueError(f"train.batch_size={t.batch_size} is not divisible by the number of "
                     f"processes ({partitioner.num_processes})")
  for name in ("num_steps", "log_every", "checkpoint_every", "eval_every"):
    if t[name] <= 0:
      raise ValueError(f"train.{name}={t[name]} must be positive")


class NonFiniteLoss(FloatingPointError):
  pass


def _check_finite(history: list[tuple[int, dict]], last_ckpt: int | None) -> None:
  for step, m in history:
    if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
      raise NonFiniteLoss(
          f"non-finite training loss at step {step} (loss={m['loss']}, "
          f"grad_norm={m['grad_norm']}, learning_rate={m['learning_rate']:.3g}); stopped before "
          f"writing a checkpoint (last good checkpoint: {last_ckpt}). Lower "
          "optimizer.learning_rate, raise optimizer.warmup_steps or set optimizer.clip_norm.")


@dataclasses.dataclass
class TrainResult:
  state: dict
  setup: Setup
  history: list[dict]           # every step's metrics (host floats)
  eval_metrics: dict[str, float]
  start_step: int


def check_finetune_steps(init_params_from: str, num_steps: int) -> None:
  """Fine-tuning continues the checkpoint's step count, so a `num_steps` at or below it would
  train nothing (and silently report the pretrained model); refuse it before any work."""
  _, step = resolve_checkpoint(init_params_from)
  if step >= num_steps:
    raise ValueError(
        f"the checkpoint to fine-tune from ({init_params_from}) is at step {step} and "
        f"train.num_steps={num_steps}: fine-tuning continues the step count from {step}, so it "
        f"would train {max(num_steps - step, 0)} steps. Set --config.train.num_steps to "
        f"{step} + the fine-tuning steps (e.g. {step + 1000} for 1000 steps).")


def train(model: Model, cfg: ConfigDict, workdir: str, *,
          make_train_iter: Callable[[], Any],
          make_eval_iter: Callable[[], Iterator[dict]] | None,
          init_params_from: str | None = None,
          partitioner: Partitioner | None = None,
          on_start: Callable[[], None] | None = None,
          extra_eval: Callable[[int, dict, Setup], dict[str, float]] | None = None,
          continue_step: bool = True) -> TrainResult:
  """Runs (or resumes) training in `workdir` until `cfg.train.num_steps`.

  `make_train_iter()` returns a grain iterator (get_state/set_state) of host-local
  batches; its state is checkpointed with the model so a resumed run continues on exactly
  the data it would have seen. `init_params_from` loads params only (fine-tuning) when the
  work dir has no checkpoint yet; the step then continues from the loaded checkpoint's, or
  with `continue_step=False` starts at 0 (a fine-tuning schedule and epochs of its own);
  continuing from a checkpoint at or past `num_steps` is an error, not a run of 0 steps.
  `on_start` runs once the work dir is known to belong to this model (e.g. to record config).
  `extra_eval(step, state, setup)` adds task metrics (accuracy/F1, ROUGE, ...) at each eval.
  """
  partitioner = partitioner or Partitioner.from_config(cfg.mesh)
  check_config(cfg, partitioner)
  t = cfg.train
  setup = make_setup(model, cfg, partitioner)
  partitioner = setup.partitioner
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=t.keep_checkpoints,
                      async_save=t.async_checkpoint)
  identity = model.identity()
  ckpt.check_identity(identity)
  latest = ckpt.latest_step()
  if latest is None and init_params_from and continue_step:
    check_finetune_steps(init_params_from, t.num_steps)
  if on_start is not None:
    on_start()
  train_iter = make_train_iter()
  if latest is not None:
    state = ckpt.restore(latest, setup.abstract_state, setup.state_shardings, train_iter)
  else:
    state = init_state(setup)
    if init_params_from:
      params, step, _, missing = load_params(init_params_from, setup.abstract_state["params"],
                                             setup.state_shardings["params"], strict=False)
      # Parameters the checkpoint lacks (a new task head) keep their fresh initialisation.
      state["params"] = jax.tree.map(lambda new, old: old if new is None else new, params,
                                     state["params"], is_leaf=lambda x: x is None)
      if missing:
        print(f"initialised from {init_params_from}; new parameters: {', '.join(missing)}")
      if continue_step:
        state["step"] = jax.device_put(jnp.asarray(step, jnp.int32),
                                       setup.state_shardings["step"])
  start = int(jax.device_get(state["step"]))
  train_step = make_train_step(setup)
  eval_step = make_eval_step(setup)
  writer = MetricsWriter(workdir)
  flops_tok = model.flops_per_token()
  unit = getattr(model, "unit", "tok")
  peak = peak_flops(cfg.model.get("dtype", "float32"), t.peak_flops_per_device)
  history: list[dict] = []
  pending: list[tuple[int, dict]] = []
  last_ckpt = latest
  eval_metrics: dict[str, float] = {}
  t0, tokens_since, step_t0 = time.time(), 0.0, start

  def flush_pending() -> list[tuple[int, dict]]:
    host = [(s, {k: float(v) for k, v in jax.device_get(m).items()}) for s, m in pending]
    _check_finite(host, last_ckpt)
    pending.clear()
    history.extend(m | {"step": s} for s, m in host)
    return host

  def run_eval(step: int) -> dict[str, float]:
    out = evaluate(eval_step, state["params"], make_eval_iter(), t.eval_batches)
    if extra_eval is not None:
      out.update(extra_eval(step, state, setup))
    writer.write(step, {f"eval/{k}": v for k, v in out.items()},
                 console=f"step {step:6d} | eval loss {out['loss']:.4f} | "
                         f"ppl {out.get('perplexity', float('nan')):.2f} | "
                         f"acc {out.get('correct', float('nan')):.4f}")
    return out

  try:
    for step in range(start, t.num_steps):
      batch = partitioner.global_batch(next(train_iter))
      state, metrics = train_step(state, batch)
      pending.append((step + 1, metrics))
      done = step + 1
      if done % t.log_every == 0 or done == t.num_steps:
        host = flush_pending()
        tokens_since += sum(m["tokens"] for _, m in host)
        dt = time.time() - t0
        tps = tokens_since / max(dt, 1e-9)
        mfu = tps * flops_tok / peak if peak else float("nan")
        eta = (t.num_steps - done) * dt / max(done - step_t0, 1)
        last = host[-1][1]
        writer.write(done, {"train/loss": last["loss"], "train/accuracy": last["correct"],
                            "train/grad_norm": last["grad_norm"],
                            "train/learning_rate": last["learning_rate"],
                            "train/tokens_per_sec": tps, "train/mfu": mfu},
                     console=f"step {done:6d} | loss {last['loss']:.4f} | "
                             f"lr {last['learning_rate']:.2e} | {tps:,.0f} {unit}/s | "
                             f"MFU {mfu:.1%} | ETA {eta / 60:.1f} min")
        t0, tokens_since, step_t0 = time.time(), 0.0, done
      if done % t.checkpoint_every == 0 or done == t.num_steps:
        flush_pending()
        ckpt.save(done, state, train_iter, identity, force=True)
        last_ckpt = done
      if make_eval_iter is not None and (done % t.eval_every == 0 or done == t.num_steps):
        eval_metrics = run_eval(done)
    if pending:
      flush_pending()
    if make_eval_iter is not None and not eval_metrics and start >= t.num_steps:
      eval_metrics = run_eval(start)
  finally:
    ckpt.close()
    writer.close()
  return TrainResult(state, setup, history, eval_metrics, start)
