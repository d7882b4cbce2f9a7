"""Metrics to the console, `metrics.jsonl` and TensorBoard event files (no TensorFlow needed).

Only process 0 writes, so multi-host runs produce one log.
"""

from __future__ import annotations

import json
import os
import time
from typing import Mapping

import jax
from absl import logging

# Peak dense FLOP/s per device, used for the MFU estimate. CPU figures are XLA matmul rates
# (2048x2048 jnp.dot, both cores) of 2-core development machines: with avx512_bf16
# (ENGINEERING_NOTES.md) and, `cpu-avx2`, on the same Zen 4 cores when the hypervisor hides
# AVX-512 (measurement in docs/benchmarks.md, "bf16 on CPU"); a device kind not listed uses
# `train.peak_flops_per_device` from the config.
PEAK_FLOPS = {
    "cpu": {"float32": 180e9, "bfloat16": 330e9},
    "cpu-avx2": {"float32": 160e9, "bfloat16": 95e9},
    "TPU v4": {"float32": 275e12, "bfloat16": 275e12},
    "TPU v5 lite": {"float32": 197e12, "bfloat16": 197e12},
    "TPU v5p": {"float32": 459e12, "bfloat16": 459e12},
    "NVIDIA H100 80GB HBM3": {"float32": 67e12, "bfloat16": 989e12},
    "NVIDIA H200": {"float32": 67e12, "bfloat16": 989e12},
    "NVIDIA A100-SXM4-80GB": {"float32": 19.5e12, "bfloat16": 312e12},
}


def peak_flops(dtype: str, override: float = 0.0) -> float:
  """Total peak FLOP/s over all devices, 0 if unknown."""
  if override:
    return override * jax.device_count()
  kind = jax.devices()[0].device_kind
  if jax.devices()[0].platform == "cpu":  # fake CPU devices share the same cores
    return PEAK_FLOPS["cpu" if _has_avx512_bf16() else "cpu-avx2"][dtype]
  return PEAK_FLOPS.get(kind, {}).get(dtype, 0.0) * jax.device_count()


def _drop_rows_after(path: str, step: int) -> None:
  """Rewrites `path` (atomically) without the rows of steps after `step`."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      if json.loads(line)["step"] <= step:
        keep.append(line)
    except (ValueError, KeyError, TypeError):
      continue  # a torn last line from a killed run
  if len(keep) != len(lines):
    with open(path + ".tmp", "w") as f:
      f.writelines(keep)
    os.replace(path + ".tmp", path)


def _has_avx512_bf16() -> bool:
  try:
    with open("/proc/cpuinfo") as f:
      return "avx512_bf16" in f.read()
  except OSError:
    return False


class MetricsWriter:
  """One row per step in `metrics.jsonl` and TensorBoard, also across resumes: a run resumed
  at step `resume_step` first drops the rows written after it (they are about to be replayed)
  and tells TensorBoard to purge those events."""

  def __init__(self, workdir: str, resume_step: int = 0):
    self.enabled = jax.process_index() == 0
    self._jsonl = None
    self._tb = None
    if self.enabled:
      from tensorboardX import SummaryWriter
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, "metrics.jsonl")
      _drop_rows_after(path, resume_step)
      self._jsonl = open(path, "a")
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"),
                               purge_step=resume_step + 1 if resume_step else None)

  def write(self, step: int, metrics: Mapping[str, float], *, console: str | None = None) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), "time": time.time(), **{k: float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    self._jsonl.flush()
    for k, v in metrics.items():
      self._tb.add_scalar(k, float(v), int(step))
    self._tb.flush()
    if console:
      logging.info(console)
      print(console, flush=True)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
