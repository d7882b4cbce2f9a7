"""Running a sweep's runs and reading them back: one work dir per run, resumed when
interrupted, skipped when finished (result.json), refused when it holds another config; the
records' CSV and each run's learning curve."""

from __future__ import annotations

import csv
import json
import math
import os
import time

import numpy as np
from ml_collections import ConfigDict

from gpt_flax import train as gpt_train
from gpt_flax.scaling_sweep import Run, Sweep, counts, run_config

_IGNORED_KEYS = ("data.data_dir", "data.tokenizer")  # where the data lives may move


def _config_diffs(saved: dict, planned: dict, prefix: str = "") -> list[str]:
  """Dotted keys whose values differ. Keys only one side has are not differences: a field
  added to (or dropped from) the base config by a later version of the code does not make a
  finished run foreign."""
  out = []
  for k in sorted(set(saved) & set(planned)):
    key, a, b = f"{prefix}{k}", saved[k], planned[k]
    if isinstance(a, dict) and isinstance(b, dict):
      out += _config_diffs(a, b, key + ".")
    elif a != b and key not in _IGNORED_KEYS:
      out.append(f"{key}: {a!r} there vs {b!r} now")
  return out


def _finite(obj):
  """NaN/inf (a scale that a flat power law lacks) become null: fit.json stays strict JSON."""
  if isinstance(obj, dict):
    return {k: _finite(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_finite(v) for v in obj]
  if isinstance(obj, (float, np.floating)):
    return float(obj) if math.isfinite(obj) else None
  return obj


def write_json(path: str, obj) -> None:
  """Strict JSON, written to a temporary file and renamed: an interrupt never leaves half."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(_finite(obj), f, indent=2, sort_keys=True, allow_nan=False)
  os.replace(tmp, path)


def check_same_run(rundir: str, cfg: ConfigDict) -> None:
  """Refuses a run dir trained with another config: one work dir never mixes two sweeps."""
  path = os.path.join(rundir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    diffs = _config_diffs(json.load(f), json.loads(cfg.to_json_best_effort()))
  if diffs:
    raise ValueError(f"{rundir} holds a run with a different config ({'; '.join(diffs[:4])}); "
                     "use a new --workdir for a different sweep")


def run_one(sweep: Sweep, run: Run, data: dict, workdir: str) -> dict:
  """Trains (or resumes, or just reads back) one run; returns its record."""
  rundir = os.path.join(workdir, "runs", run.name)
  cfg = run_config(sweep, run, data)
  check_same_run(rundir, cfg)
  result_path = os.path.join(rundir, "result.json")
  if os.path.exists(result_path):
    with open(result_path) as f:
      print(f"scaling | {run.name}: finished earlier, skipped", flush=True)
      return json.load(f)
  timing_path = os.path.join(rundir, "timing.json")
  timing = {"wall_s": 0.0, "cpu_s": 0.0, "sessions": 0}
  if os.path.exists(timing_path):
    with open(timing_path) as f:
      timing = json.load(f)
  print(f"scaling | {run.name}: training {run.steps} steps", flush=True)
  t0, c0 = time.time(), time.process_time()
  try:
    result = gpt_train.run(cfg, rundir)
  finally:
    # An interrupted run's time is kept and added to when it resumes.
    os.makedirs(rundir, exist_ok=True)
    timing = {"wall_s": timing["wall_s"] + time.time() - t0,
              "cpu_s": timing["cpu_s"] + time.process_time() - c0,
              "sessions": timing["sessions"] + 1}
    write_json(timing_path, timing)
  ev = result.eval_metrics
  tokens = run.steps * sweep.batch_size * sweep.seq_len
  n = counts(cfg)
  record = {"name": run.name, "d_model": run.size.d_model, "num_layers": run.size.num_layers,
            "num_heads": run.size.num_heads, "N": n["N"], "N_total": n["N_total"],
            "steps": run.steps, "batch_size": sweep.batch_size, "seq_len": sweep.seq_len,
            "D": tokens, "C": tokens * n["flops_per_token"], "C_6ND": 6.0 * n["N"] * tokens,
            "C_with_logits": tokens * n["flops_per_token_with_logits"],
            "learning_rate": cfg.optimizer.learning_rate, "val_loss": ev["loss"],
            "val_perplexity": ev["perplexity"], "val_accuracy": ev["correct"],
            "val_tokens": ev["tokens"], **timing}
  write_json(result_path, record)
  return record


def learning_curve(rundir: str) -> dict[str, np.ndarray]:
  """Train and eval loss by step from metrics.jsonl (a resumed run re-logs some steps: the last
  record of a step wins)."""
  train, evals = {}, {}
  path = os.path.join(rundir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        rec = json.loads(line)
        if "train/loss" in rec:
          train[rec["step"]] = rec["train/loss"]
        if "eval/loss" in rec:
          evals[rec["step"]] = rec["eval/loss"]
  as_arrays = lambda d: (np.array(sorted(d), dtype=float), np.array([d[k] for k in sorted(d)]))
  (ts, tl), (es, el) = as_arrays(train), as_arrays(evals)
  return {"train_steps": ts, "train_loss": tl, "eval_steps": es, "eval_loss": el}


CSV_FIELDS = ("name", "d_model", "num_layers", "num_heads", "N", "N_total", "steps",
              "batch_size", "seq_len", "D", "C", "C_6ND", "C_with_logits", "learning_rate",
              "val_loss", "val_perplexity", "val_accuracy", "val_tokens", "wall_s", "cpu_s",
              "sessions")


def write_csv(records: list[dict], path: str) -> None:
  with open(path + ".tmp", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    w.writeheader()
    for r in records:
      w.writerow({k: r[k] for k in CSV_FIELDS})
  os.replace(path + ".tmp", path)
