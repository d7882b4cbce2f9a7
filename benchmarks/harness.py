"""What the CPU speed benchmarks share: real devices only, the precision names, CPU time and
the timed trial. Imports no JAX, so a benchmark can call `use_real_cpu()` before it does."""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}


def use_real_cpu() -> None:
  """Before JAX is imported: the real CPU device, never fake ones (they split the cores)."""
  if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
    sys.exit("error: unset --xla_force_host_platform_device_count: this benchmark uses the "
             "real devices")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")


def parse_precisions(p: argparse.ArgumentParser, spec: str) -> list[str]:
  """'fp32,bf16' -> ['fp32', 'bf16']; an unknown name is a usage error."""
  out = [x.strip() for x in spec.split(",") if x.strip()]
  for x in out:
    if x not in PRECISIONS:
      p.error(f"--precisions: unknown {x!r}; valid: {', '.join(PRECISIONS)}")
  return out


def cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def cpu_seconds() -> float:
  t = os.times()
  return t.user + t.system


def time_trial(r: Any, steps: int, tokens_per_step: int,
               max_s: float = 0.0) -> tuple[float, float, float, int]:
  """(tokens/s, CPU utilisation in cores, final loss, steps run) of up to `steps` calls of
  `r.step()`, `r.sync()` returning the loss.

  With `max_s`, stops after the step that crosses `max_s` seconds. That needs a sync per
  step (JAX dispatches asynchronously), so it is only checked while the steps are slow enough
  (first step > max_s / steps) for the bound to matter.
  """
  r.sync()
  c0, t0 = cpu_seconds(), time.perf_counter()
  done, check = 0, bool(max_s)
  while done < steps:
    r.step()
    done += 1
    if check:
      r.sync()
      elapsed = time.perf_counter() - t0
      if elapsed > max_s:
        break
      if done == 1 and elapsed * steps <= max_s:
        check = False  # fast enough: no more per-step syncs
  loss = r.sync()
  dt, dc = time.perf_counter() - t0, cpu_seconds() - c0
  return done * tokens_per_step / dt, dc / dt, loss, done
