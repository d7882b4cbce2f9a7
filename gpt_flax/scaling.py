"""Scaling-law study in one command: `python -m gpt_flax.scaling --preset=quick --workdir=DIR`.

Trains a grid of GPT sizes x token budgets (gpt_flax/scaling_sweep.py), each run in its own work
dir DIR/runs/<name> through `gpt_flax.train.run` (gpt_flax/scaling_runs.py: an interrupted run
resumes from its checkpoint, and a finished run -- one with result.json -- is never repeated),
then fits power laws (gpt_flax/scaling_fit.py) and writes DIR/runs.csv, DIR/fit.json and PNG
plots (gpt_flax/scaling_plot.py).

Conventions (Kaplan et al. 2020): N counts non-embedding parameters (token and position
embeddings excluded; the tied output projection is the token embedding, so it is excluded too);
D = steps x batch x seq_len tokens; C = D (6 N + 12 L T d) training FLOPs, the attention
score/value matmuls included (the trainer's PaLM accounting without the vocabulary projection).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import numpy as np
from absl import flags

from common import cli
from common import config as config_lib
from gpt_flax import scaling_fit, scaling_plot
from gpt_flax.scaling_runs import (CSV_FIELDS, check_same_run, learning_curve, run_one,
                                   write_csv, write_json)
from gpt_flax.scaling_sweep import (PRESETS, Run, Size, Sweep, counts, parse_sizes, plan,
                                    run_config)

# The sweep's names stay importable from here, the command's module.
__all__ = ["CSV_FIELDS", "PRESETS", "Run", "Size", "Sweep", "cli_main", "counts", "define_flags",
           "fit_records", "learning_curve", "main", "parse_sizes", "plan", "run_config",
           "run_one", "run_sweep", "summary", "sweep_from_flags", "write_csv"]


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
    check_same_run(os.path.join(workdir, "runs", run.name), run_config(sweep, run, data))
  write_json(os.path.join(workdir, "sweep.json"),
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
  write_json(os.path.join(workdir, "fit.json"), fit)
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


def main() -> None:
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
