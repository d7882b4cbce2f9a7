"""Scaling-law study in one command: `python -m gpt_flax.scaling --preset=quick --workdir=DIR`.

Trains a grid of GPT sizes x token budgets, each run in its own work dir DIR/runs/<name> through
`gpt_flax.train.run` (so `common.trainer.train` resumes an interrupted run from its checkpoint,
and a finished run -- one with result.json -- is never repeated), then fits power laws
(gpt_flax/scaling_fit.py) and writes DIR/runs.csv, DIR/fit.json and PNG plots.

Conventions (Kaplan et al. 2020): N counts non-embedding parameters (token and position
embeddings excluded; the tied output projection is the token embedding, so it is excluded too);
D = steps x batch x seq_len tokens; C = D (6 N + 12 L T d) training FLOPs, the attention
score/value matmuls included (the trainer's PaLM accounting without the vocabulary projection).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time

import numpy as np
from absl import flags
from ml_collections import ConfigDict

from common import cli
from common import config as config_lib
from configs.gpt import get_config
from gpt_flax import scaling_fit, scaling_plot
from gpt_flax import train as gpt_train
from gpt_flax.model import GPTModel


@dataclasses.dataclass(frozen=True)
class Size:
  d_model: int
  num_layers: int
  num_heads: int

  @property
  def name(self) -> str:
    return f"d{self.d_model:04d}l{self.num_layers:02d}"


def parse_sizes(spec: str) -> tuple[Size, ...]:
  """'32x1,64x2,256x4x8' -> sizes (d_model x layers [x heads]; heads default to d_model/32,
  at least 2)."""
  sizes = []
  for item in spec.split(","):
    parts = item.strip().lower().split("x")
    if len(parts) not in (2, 3) or not all(p.isdigit() and int(p) > 0 for p in parts):
      raise ValueError(f"bad size {item!r} in {spec!r}; expected D_MODELxLAYERS[xHEADS], "
                       "e.g. 64x2 or 256x4x8")
    d, layers = int(parts[0]), int(parts[1])
    heads = int(parts[2]) if len(parts) == 3 else max(2, d // 32)
    if d % heads:
      raise ValueError(f"bad size {item!r}: d_model {d} is not divisible by {heads} heads")
    sizes.append(Size(d, layers, heads))
  return tuple(sizes)


@dataclasses.dataclass(frozen=True)
class Sweep:
  """Every size is trained at every step budget (a full cosine schedule per run)."""
  sizes: tuple[Size, ...]
  steps: tuple[int, ...]
  batch_size: int
  seq_len: int
  eval_batches: int
  evals_per_run: int = 2
  log_every: int = 10
  base_lr: float = 2e-3   # the demo preset's tuned rate at d_model 256
  vocab_size: int = 8192

  def learning_rate(self, size: Size) -> float:
    """base_lr at d_model 256, scaled by sqrt(256 / d_model): narrower nets take larger steps."""
    return round(self.base_lr * math.sqrt(256 / size.d_model), 6)


# Sized for 2 dedicated CPU cores: quick <= 10 min, cpu <= 60 min (from measured CPU time per
# step and per run; see the scaling section of the README).
PRESETS = {
    # 6 sizes, 12.8k..595k non-embedding params (46x), x 2 budgets (102k, 307k tokens).
    "quick": Sweep(sizes=parse_sizes("32x1,48x1,64x1,64x2,96x2,128x3"), steps=(100, 300),
                   batch_size=16, seq_len=64, eval_batches=16),
    # 7 sizes, 12.8k..3.2M non-embedding params (250x), x 3 budgets (164k, 410k, 819k tokens).
    "cpu": Sweep(sizes=parse_sizes("32x1,48x1,64x2,96x2,128x3,192x3,256x4"),
                 steps=(80, 200, 400), batch_size=16, seq_len=128, eval_batches=24,
                 evals_per_run=4),
}


@dataclasses.dataclass(frozen=True)
class Run:
  size: Size
  steps: int

  @property
  def name(self) -> str:
    return f"{self.size.name}_s{self.steps:06d}"


def plan(sweep: Sweep) -> list[Run]:
  """Smallest budget first, so an interrupted sweep already covers every size."""
  return [Run(size, steps) for steps in sorted(sweep.steps) for size in sweep.sizes]


def run_config(sweep: Sweep, run: Run, data: dict) -> ConfigDict:
  """The GPT config of one run: AdamW with a cosine schedule, no dropout, fp32."""
  s = run.size
  cfg = get_config("demo")
  # Every field pinned here, not inherited, so a change to the demo preset cannot change a study.
  cfg.model.update(vocab_size=sweep.vocab_size, max_len=sweep.seq_len, num_layers=s.num_layers,
                   d_model=s.d_model, num_heads=s.num_heads, d_ff=4 * s.d_model,
                   dtype="float32", dropout_rate=0.0, norm_eps=1e-5, scan_layers=True,
                   remat_policy="none")
  cfg.data.update(seq_len=sweep.seq_len, **data)
  every = max(1, run.steps // sweep.evals_per_run)
  cfg.train.update(batch_size=sweep.batch_size, num_steps=run.steps,
                   log_every=min(sweep.log_every, run.steps), eval_every=every,
                   eval_batches=sweep.eval_batches, checkpoint_every=every, keep_checkpoints=1)
  cfg.optimizer.update(name="adamw", learning_rate=sweep.learning_rate(s),
                       warmup_steps=max(1, min(100, run.steps // 10)), schedule="cosine",
                       end_lr_ratio=0.1, weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8,
                       clip_norm=1.0)
  cfg.sample.num_prompts = 0  # no samples after each run
  return cfg


def counts(cfg: ConfigDict) -> dict:
  """Parameter counts and training FLOPs per token of one config (see module docstring)."""
  model = GPTModel(cfg)
  c = model.net_cfg
  n = model.num_params(non_embedding=True)
  return {"N": n, "N_total": n + (c.vocab_size + c.max_len) * c.d_model,
          "flops_per_token": 6.0 * n + 12.0 * c.num_layers * c.d_model * cfg.data.seq_len,
          "flops_per_token_with_logits": model.flops_per_token()}


# ----------------------------------------------------------------------------------------
# Running the sweep.

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


def _write_json(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(_finite(obj), f, indent=2, sort_keys=True, allow_nan=False)
  os.replace(tmp, path)


def _check_same_run(rundir: str, cfg: ConfigDict) -> None:
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
  _check_same_run(rundir, cfg)
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
    _write_json(timing_path, timing)
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
  _write_json(result_path, record)
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


def fit_records(records: list[dict], n_boot: int) -> dict:
  arr = lambda k: np.array([r[k] for r in records], dtype=float)
  out = scaling_fit.fit_all(arr("N"), arr("D"), arr("C"), arr("val_loss"), n_boot=n_boot)
  out["runs"] = [r["name"] for r in records]
  out["conventions"] = {
      "N": "non-embedding parameters (token/position embeddings excluded, Kaplan)",
      "D": "training tokens = steps x batch x seq_len",
      "C": "training FLOPs = D (6 N + 12 L T d), attention included, vocabulary projection not",
      "parametric": "Chinchilla approach 3 on all runs; N_opt = G (C/6)^a in the C = 6ND "
                    "convention",
      "intervals": "68% residual-bootstrap intervals on log loss (16th-84th percentile)",
      "loss": "final validation loss in nats per token (the run's own tokenizer)"}
  return out


def _fmt(fit: dict, key: str) -> str:
  if "skipped" in fit:
    return "n/a (see below)"
  v, ci = fit["value"][key], fit["ci68"].get(key, [float("nan")] * 2)
  return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def summary(fit: dict) -> str:
  """The fitted exponents next to Kaplan's and Chinchilla's published values."""
  k, ch = scaling_fit.PUBLISHED["kaplan"], scaling_fit.PUBLISHED["chinchilla"]
  rows = [
      ("alpha_N  L(N) = (N_c/N)^a", _fmt(fit["L_N"]["power"], "alpha"), f"{k['alpha_N']}", "-"),
      ("alpha_N  L(N) = E + A/N^a", _fmt(fit["L_N"]["power+E"], "alpha"), "-",
       f"{ch['alpha']} (alpha)"),
      ("alpha_C  L(C) frontier", _fmt(fit["L_C"]["power"], "alpha"), f"{k['alpha_C']}", "-"),
      ("alpha_C  L(C) = E + A/C^a", _fmt(fit["L_C"]["power+E"], "alpha"), "-", "-"),
      ("alpha    L(N,D) param.", _fmt(fit["parametric"], "alpha"), "-", f"{ch['alpha']}"),
      ("beta     L(N,D) param.", _fmt(fit["parametric"], "beta"), "-", f"{ch['beta']}"),
      ("a  N_opt ~ C^a (param.)", _fmt(fit["parametric"], "a"), f"{k['a']}",
       "/".join(str(v) for v in ch["a"].values())),
  ]
  head = (f"{'exponent':28s} {'this sweep (68% interval)':34s} {'Kaplan20':>9s}  "
          f"{'Chinchilla22':>14s}")
  lines = [head, "-" * len(head)]
  lines += [f"{a:28s} {b:34s} {c:>9s}  {d:>14s}" for a, b, c, d in rows]
  fits = {"L(N) " + form: fit["L_N"][form] for form in ("power", "power+E")}
  fits |= {"L(C) " + form: fit["L_C"][form] for form in ("power", "power+E")}
  fits["L(N,D)"] = fit["parametric"]
  lines += [f"n/a {name}: {f['skipped']}" for name, f in fits.items() if "skipped" in f]
  return "\n".join(lines)


def run_sweep(sweep: Sweep, workdir: str, *, data: dict, fit_only: bool = False,
              n_boot: int = 200) -> dict:
  """Trains every run not yet finished, then writes runs.csv, fit.json and the plots."""
  os.makedirs(workdir, exist_ok=True)
  runs = plan(sweep)
  for run in runs:  # a work dir of another sweep is refused before anything is trained
    _check_same_run(os.path.join(workdir, "runs", run.name), run_config(sweep, run, data))
  _write_json(os.path.join(workdir, "sweep.json"),
              {"sweep": dataclasses.asdict(sweep), "data": data,
               "runs": [r.name for r in runs]})
  t0 = time.time()
  records = []
  for run in runs:
    if fit_only:
      path = os.path.join(workdir, "runs", run.name, "result.json")
      if os.path.exists(path):
        with open(path) as f:
          records.append(json.load(f))
    else:
      records.append(run_one(sweep, run, data, workdir))
  print(f"scaling | {len(records)}/{len(runs)} runs finished; this session "
        f"{time.time() - t0:.0f} s", flush=True)
  if not records:
    raise ValueError(f"no finished runs in {workdir}/runs to fit; run without --fit_only first")
  write_csv(records, os.path.join(workdir, "runs.csv"))
  curves = {r["name"]: learning_curve(os.path.join(workdir, "runs", r["name"])) for r in records}
  fit = fit_records(records, n_boot)
  fit["wall_s_runs_total"] = sum(r["wall_s"] for r in records)
  fit["cpu_s_runs_total"] = sum(r["cpu_s"] for r in records)
  _write_json(os.path.join(workdir, "fit.json"), fit)
  scaling_plot.plot_all(records, curves, fit, workdir)
  print(summary(fit), flush=True)
  print(f"scaling | wrote {workdir}/runs.csv, fit.json, scaling.png (+ per-panel PNGs); "
        f"training wall time {fit['wall_s_runs_total'] / 60:.1f} min over all runs", flush=True)
  return fit


# ----------------------------------------------------------------------------------------
# Command line.

def define_flags() -> None:
  flags.DEFINE_string("workdir", None, "Where the sweep's runs, CSV, fits and plots go.")
  flags.DEFINE_string("preset", "quick", f"Sweep preset: {', '.join(PRESETS)}.")
  flags.DEFINE_string("sizes", None, "Override the preset's sizes: D_MODELxLAYERS[xHEADS],...")
  flags.DEFINE_string("steps", None, "Override the preset's step budgets: S1,S2,...")
  flags.DEFINE_string("dataset", "debian", "Dataset spec (see common/data/sources.py).")
  flags.DEFINE_string("data_dir", config_lib.DEFAULT_DATA_DIR, "Prepared data.")
  flags.DEFINE_string("tokenizer", "", "SentencePiece model (default: the dataset's own).")
  flags.DEFINE_string("text_field", "text", "Text field of the dataset's examples.")
  flags.DEFINE_bool("fit_only", False, "Fit and plot the finished runs; train none.")
  flags.DEFINE_integer("n_boot", 200, "Bootstrap resamples per fit.")


def sweep_from_flags() -> Sweep:
  f = flags.FLAGS
  if f.preset not in PRESETS:
    raise ValueError(f"unknown scaling preset {f.preset!r}; valid: {', '.join(PRESETS)}")
  sweep = PRESETS[f.preset]
  if f.sizes:
    sweep = dataclasses.replace(sweep, sizes=parse_sizes(f.sizes))
  if f.steps:
    try:
      steps = tuple(int(s) for s in f.steps.split(","))
    except ValueError:
      steps = ()
    if not steps or min(steps) < 1:
      raise ValueError(f"bad --steps {f.steps!r}; expected positive integers, e.g. 100,300")
    sweep = dataclasses.replace(sweep, steps=steps)
  return sweep


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  if not f.workdir:
    raise ValueError("--workdir is required")
  workdir = os.path.abspath(os.path.expanduser(f.workdir))
  import jax  # pylint: disable=g-import-not-at-top
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    # Re-running (resume, --fit_only after more runs) skips recompiling what it compiled before.
    jax.config.update("jax_compilation_cache_dir", os.path.join(workdir, "jax_cache"))
  data = {"dataset": f.dataset, "data_dir": os.path.expanduser(f.data_dir),
          "tokenizer": f.tokenizer, "text_field": f.text_field}
  run_sweep(sweep_from_flags(), workdir, data=data, fit_only=f.fit_only, n_boot=f.n_boot)


def cli_main() -> None:
  cli.run(main, define_flags)


if __name__ == "__main__":
  cli_main()
