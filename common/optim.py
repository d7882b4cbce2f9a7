"""Optax optimizers and learning-rate schedules selected by config."""

from __future__ import annotations

from typing import Any

import jax
import optax
from ml_collections import ConfigDict

SCHEDULES = ("cosine", "linear", "rsqrt", "constant")
OPTIMIZERS = ("adamw", "adafactor")


def make_schedule(cfg: ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warmup to `learning_rate`, then the named decay.

  `rsqrt` is T5's inverse-square-root decay, lr * sqrt(warmup / step) after warmup.
  """
  lr, warmup = cfg.learning_rate, cfg.warmup_steps
  if cfg.schedule not in SCHEDULES:
    raise ValueError(f"unknown optimizer.schedule {cfg.schedule!r}; valid: {list(SCHEDULES)}")
  end = lr * cfg.end_lr_ratio
  decay_steps = max(num_steps - warmup, 1)
  if cfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(lr, decay_steps, alpha=cfg.end_lr_ratio)
  elif cfg.schedule == "linear":
    decay = optax.linear_schedule(lr, end, decay_steps)
  elif cfg.schedule == "rsqrt":
    decay = lambda step: lr * jax.lax.rsqrt((step + max(warmup, 1)) / max(warmup, 1))
  else:
    decay = optax.constant_schedule(lr)
  if warmup <= 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def decay_mask(params: Any) -> Any:
  """Weight decay on matrices only (kernels, embeddings); never on biases or norm scales."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: ConfigDict, num_steps: int) -> optax.GradientTransformation:
  if cfg.name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer.name {cfg.name!r}; valid: {list(OPTIMIZERS)}")
  schedule = make_schedule(cfg, num_steps)
  clip = [optax.clip_by_global_norm(cfg.clip_norm)] if cfg.clip_norm > 0 else []
  if cfg.name == "adamw":
    opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                      weight_decay=cfg.weight_decay, mask=decay_mask)
  else:
    # Factored second moments (v_row/v_col) as in T5; their shardings follow the parameters
    # (see sharding.opt_state_specs).
    opt = optax.adafactor(schedule, decay_rate=cfg.adafactor_decay_rate, clipping_threshold=1.0,
                          multiply_by_parameter_scale=cfg.adafactor_param_scale,
                          min_dim_size_to_factor=cfg.adafactor_min_dim_to_factor,
                          weight_decay_rate=cfg.weight_decay or None,
                          weight_decay_mask=decay_mask)
  return optax.chain(*clip, opt)
