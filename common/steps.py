"""The jitted train and eval steps: pure functions of (state or params, batch), with explicit
in/out shardings and a donated train state, built on the partitioner's `jit`."""

from __future__ import annotations

import math
from typing import Iterator

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from common import sharding
from common.optim import make_schedule
from common.partitioning import PartitionedFunction
from common.train_state import REQUIRED_SUMS, Setup


def _split_microbatches(batch: dict, n: int) -> dict:
  """[B, ...] -> [n, B/n, ...] taking strided rows, so every microbatch stays spread over all
  data-parallel devices (contiguous blocks would put each microbatch on a few devices)."""
  def split(x):
    x = x.reshape((x.shape[0] // n, n) + x.shape[1:]).swapaxes(0, 1)
    return sharding.constrain(x, (None, "batch") + (None,) * (x.ndim - 2))
  return jax.tree.map(split, batch)


def has_dropout(cfg: ConfigDict) -> bool:
  return any(v > 0 for k, v in cfg.model.items() if "dropout" in k and isinstance(v, float))


def _sums(setup: Setup, params, batch: dict, key: jax.Array | None) -> dict:
  sums = setup.model.loss(setup.merge(params), batch, dropout_key=key)
  missing = [k for k in REQUIRED_SUMS if k not in sums]
  if missing:
    raise ValueError(f"{type(setup.model).__name__}.loss returned no {missing}; a model's loss "
                     f"must return the sums {list(REQUIRED_SUMS)}")
  return sums


def make_train_step(setup: Setup) -> PartitionedFunction:
  """Jitted (state, batch) -> (state, metrics): grad accumulation, clipping, optimizer."""
  cfg = setup.cfg
  accum = cfg.train.grad_accum_steps
  schedule = make_schedule(cfg.optimizer, cfg.train.num_steps)
  use_dropout = has_dropout(cfg)

  def grads_and_sums(params, batch, key):
    def loss_fn(p):
      sums = _sums(setup, p, batch, key)
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
    return _sums(setup, params, batch, None)

  p = setup.partitioner
  return p.jit(step, in_shardings=(setup.state_shardings["params"], p.batch_sharding()),
               out_shardings=p.replicated_sharding())


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
