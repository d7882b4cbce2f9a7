"""Does pretraining transfer? Learning curves over label budgets, one implementation for every
family (`bert_flax.transfer`, `t5x_lite.transfer` are thin modules over it).

  python -m bert_flax.transfer --out=DIR [--config=configs/bert.py:demo --config.a.b=v ...]
  python -m t5x_lite.transfer --out=DIR [--config=configs/t5.py:demo ...]

The grid: each label budget of `transfer.budgets` x init (the pretraining run, random) x seed
of `transfer.seeds` is one fine-tuning run (a "cell") in OUT/cells/<init>_n<budget>_s<seed>.
Pretraining (the config's `optimizer`/`train` sections) runs once into OUT/pretrain, or
`--pretrained=DIR` reuses another run. A seed draws one order of the labelled training split;
budget n takes its first n examples, so subsets are nested (the 100 lie inside the 300) and
both inits of a seed see the same ones. Fine-tuning uses the config's `finetune` section, for
steps = clip(transfer.epochs x n / batch, transfer.min_steps, transfer.max_steps): small
budgets need many passes, the largest is capped by the 2-core budget. A finished cell
(cell.json) is skipped when the command is rerun. Writes OUT/transfer.csv (one row per cell),
OUT/transfer.png (mean +- std per budget, the baseline drawn) and OUT/table.md (printed).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import statistics
import time
from typing import Any, Callable

import numpy as np
from absl import flags
from ml_collections import ConfigDict, config_flags

from common import cli
from common import config as config_lib
from common.rundir import RunDir

FLAGS = flags.FLAGS
INITS = ("pretrained", "random")


@dataclasses.dataclass(frozen=True)
class Family:
  """What a model family plugs into the grid."""
  name: str                      # "bert": configs/<name>.py
  default_preset: str
  metric: str                    # the cell result the table and plot compare
  metric_name: str               # its axis label
  # The labelled examples of a role ("train", "validation", "test"), as JSON-able dicts.
  examples: Callable[[ConfigDict, str], list[dict[str, Any]]]
  batch_size: Callable[[ConfigDict], int]
  pretrain: Callable[[ConfigDict, str], dict[str, float]]
  # (config with finetune.init_from and seed set, data dir of {role}.jsonl, cell dir, steps)
  # -> the cell's metrics
  finetune: Callable[[ConfigDict, str, str, int], dict[str, float]]
  baseline: Callable[[ConfigDict], tuple[str, float]]     # (what it is, its metric)
  # Steps follow from epochs over the data (BERT fine-tuning): the cell's training file then
  # holds its subset repeated to fill them, in one epoch.
  repeat_data: bool = False


def parse_budgets(spec: str, n_train: int) -> list[int]:
  """'100,300,all' -> sorted label counts; 'all' is the whole training split."""
  out = set()
  for part in (p.strip() for p in spec.split(",") if p.strip()):
    n = n_train if part == "all" else int(part) if part.isdigit() else 0
    if not 0 < n <= n_train:
      raise ValueError(f"transfer.budgets: {part!r} is not a label count in 1..{n_train} (the "
                       "training split's size) or 'all'")
    out.add(n)
  if not out:
    raise ValueError("transfer.budgets is empty")
  return sorted(out)


def parse_seeds(spec: str) -> list[int]:
  parts = [p.strip() for p in spec.split(",") if p.strip()]
  if not parts or not all(p.isdigit() for p in parts):
    raise ValueError(f"transfer.seeds={spec!r} must be a comma-separated list of integers >= 0")
  return [int(p) for p in parts]


def finetune_steps(t: ConfigDict, n: int, batch_size: int) -> int:
  if not 0 < t.min_steps <= t.max_steps:
    raise ValueError(f"transfer.min_steps={t.min_steps} and max_steps={t.max_steps} must "
                     "satisfy 0 < min_steps <= max_steps")
  return min(max(math.ceil(t.epochs * n / batch_size), t.min_steps), t.max_steps)


def jsonable(value: Any) -> Any:
  """A field of a TFDS / JSONL example as JSON (text comes back from TFDS as bytes)."""
  if isinstance(value, bytes):
    return value.decode("utf-8")
  return value.item() if isinstance(value, np.generic) else value


def _write_jsonl(path: str, rows: list[dict[str, Any]], repeat: int = 1) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for _ in range(repeat):
      for row in rows:
        f.write(json.dumps(row) + "\n")
  os.replace(tmp, path)


class LabelledData:
  """OUT/data: the full evaluation splits once, and per (seed, budget) the seeded subset of
  the labelled training split, as the JSONL files cells fine-tune on."""

  def __init__(self, family: Family, cfg: ConfigDict, out: str):
    self.dir = os.path.join(out, "data")
    os.makedirs(self.dir, exist_ok=True)
    self.rows = family.examples(cfg, "train")
    for role in ("validation", "test"):
      path = os.path.join(self.dir, f"{role}.jsonl")
      if not os.path.exists(path):
        _write_jsonl(path, family.examples(cfg, role))

  def subset(self, seed: int, n: int) -> list[dict[str, Any]]:
    """The first n of the seed's order: nested across budgets."""
    order = np.random.default_rng([seed, 2024]).permutation(len(self.rows))
    return [self.rows[i] for i in order[:n]]

  def write(self, seed: int, n: int, repeat: int) -> str:
    path = os.path.join(self.dir, f"n{n}_s{seed}")
    os.makedirs(path, exist_ok=True)
    _write_jsonl(os.path.join(path, "train.jsonl"), self.subset(seed, n), repeat)
    for role in ("validation", "test"):
      link = os.path.join(path, f"{role}.jsonl")
      if not os.path.lexists(link):
        os.symlink(os.path.join("..", f"{role}.jsonl"), link)
    return path


def _mean_std(xs: list[float]) -> tuple[float, float]:
  return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def summarize(rows: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
  """Per budget: mean, std of each init, and the difference in standard errors."""
  out = []
  for n in sorted({r["budget"] for r in rows}):
    line: dict[str, Any] = {"budget": n}
    for init in INITS:
      xs = [r[metric] for r in rows if r["budget"] == n and r["init"] == init]
      line[init] = (*_mean_std(xs), len(xs)) if xs else None
    p, r = line["pretrained"], line["random"]
    line["z"] = None
    if p and r:
      se = math.sqrt(p[1] ** 2 / p[2] + r[1] ** 2 / r[2])
      line["z"] = (p[0] - r[0]) / se if se > 0 else None
    out.append(line)
  return out


def table(summary: list[dict[str, Any]], metric: str, baseline: tuple[str, float]) -> str:
  fmt = lambda c: f"{c[0]:.4f} ± {c[1]:.4f} ({c[2]})" if c else "-"
  lines = [f"| labels | pretrained: {metric} | random init | difference | in SE |",
           "|---:|---:|---:|---:|---:|"]
  for s in summary:
    p, r = s["pretrained"], s["random"]
    diff = f"{p[0] - r[0]:+.4f}" if p and r else "-"
    z = f"{s['z']:+.1f}" if s["z"] is not None else "-"
    lines.append(f"| {s['budget']} | {fmt(p)} | {fmt(r)} | {diff} | {z} |")
  lines.append(f"\nbaseline: {baseline[0]}: {baseline[1]:.4f}")
  return "\n".join(lines)


def plot(summary: list[dict[str, Any]], rows: list[dict[str, Any]], family: Family,
         baseline: tuple[str, float], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for init, color in zip(INITS, ("tab:blue", "tab:orange")):
    pts = [(s["budget"], s[init]) for s in summary if s[init]]
    if not pts:
      continue
    xs = [x for x, _ in pts]
    ax.errorbar(xs, [c[0] for _, c in pts], yerr=[c[1] for _, c in pts], marker="o",
                capsize=3, color=color, label=f"{init} (mean ± std)")
    seeds = [(r["budget"], r[family.metric]) for r in rows if r["init"] == init]
    ax.scatter(*zip(*seeds), s=8, alpha=0.4, color=color)
  ax.axhline(baseline[1], ls="--", color="gray", label=baseline[0])
  ax.set_xscale("log")
  ax.set_xlabel("labelled training examples")
  ax.set_ylabel(family.metric_name)
  ax.set_title(f"{family.name}: fine-tuned from pretraining vs random init")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _pretrain(family: Family, cfg: ConfigDict, out: str) -> tuple[str, dict]:
  """OUT/pretrain, trained (or resumed) until done; its metrics are kept in pretrain.json."""
  workdir = os.path.join(out, "pretrain")
  record = os.path.join(out, "pretrain.json")
  if os.path.exists(record) and RunDir(workdir).latest_step() == cfg.train.num_steps:
    with open(record) as f:
      return workdir, json.load(f)
  print(f"pretraining {family.name} for {cfg.train.num_steps} steps in {workdir}", flush=True)
  t0 = time.time()
  metrics = family.pretrain(cfg, workdir) | {"steps": cfg.train.num_steps,
                                             "wall_s": round(time.time() - t0, 1)}
  with open(record, "w") as f:
    json.dump(metrics, f, indent=2)
  return workdir, metrics


def run_cell(family: Family, cfg: ConfigDict, data: LabelledData, pretrained: str, init: str,
             n: int, seed: int, cells: str) -> dict[str, Any]:
  """One fine-tuning run, or its recorded result when it finished before."""
  cell = os.path.join(cells, f"{init}_n{n}_s{seed}")
  done = os.path.join(cell, "cell.json")
  if os.path.exists(done):
    with open(done) as f:
      return json.load(f) | {"skipped": True}
  c = ConfigDict(cfg.to_dict())
  c.seed = seed
  c.finetune.init_from = pretrained if init == "pretrained" else ""
  c.data.tokenizer = RunDir(pretrained).vocab().path  # both inits read the same ids
  batch = family.batch_size(c)
  steps = finetune_steps(c.transfer, n, batch)
  data_dir = data.write(seed, n, math.ceil(steps * batch / n) if family.repeat_data else 1)
  os.makedirs(cell, exist_ok=True)
  t0 = time.time()
  with open(os.path.join(cell, "stdout.txt"), "a") as log, contextlib.redirect_stdout(log):
    metrics = family.finetune(c, data_dir, cell, steps)
  row = {"family": family.name, "init": init, "budget": n, "seed": seed,
         **metrics, "wall_s": round(time.time() - t0, 1)}
  with open(done + ".tmp", "w") as f:
    json.dump(row, f, indent=2)
  os.replace(done + ".tmp", done)
  return row


def run_grid(family: Family, cfg: ConfigDict, out: str, pretrained: str | None = None
             ) -> list[dict[str, Any]]:
  """Every cell of the grid (finished ones skipped); writes the CSV, plot and table."""
  t = cfg.transfer
  seeds = parse_seeds(t.seeds)
  out = os.path.abspath(out)
  os.makedirs(out, exist_ok=True)
  data = LabelledData(family, cfg, out)
  budgets = parse_budgets(t.budgets, len(data.rows))
  if pretrained:
    pre_metrics = {"reused": pretrained}
    RunDir.find(pretrained)
  else:
    pretrained, pre_metrics = _pretrain(family, cfg, out)
  print(f"pretraining: {json.dumps(pre_metrics)}", flush=True)
  rows = []
  for n in budgets:
    for seed in seeds:
      for init in INITS:
        row = run_cell(family, cfg, data, pretrained, init, n, seed, os.path.join(out, "cells"))
        what = "done before" if row.pop("skipped", False) else f"{row['wall_s'] / 60:.1f} min"
        print(f"cell {init:10s} n={n:<6d} seed {seed}: {family.metric} "
              f"{row[family.metric]:.4f} ({what})", flush=True)
        rows.append(row)
  write_outputs(family, cfg, out, rows, pre_metrics)
  return rows


def write_outputs(family: Family, cfg: ConfigDict, out: str, rows: list[dict[str, Any]],
                  pre_metrics: dict) -> None:
  keys = list(dict.fromkeys(k for r in rows for k in r))
  with open(os.path.join(out, "transfer.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
  baseline = family.baseline(cfg)
  summary = summarize(rows, family.metric)
  text = table(summary, family.metric, baseline)
  text += f"\npretraining: {json.dumps(pre_metrics)}"
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(text + "\n")
  plot(summary, rows, family, baseline, os.path.join(out, "transfer.png"))
  print("\n" + text, flush=True)


def define_flags(family: Family) -> None:
  spec = os.path.join(config_lib.CONFIG_DIR, f"{family.name}.py:{family.default_preset}")
  config_flags.DEFINE_config_file("config", spec, f"{family.name} config file[:preset]; "
                                  "pretraining and fine-tuning settings, and `transfer`")
  flags.DEFINE_string("out", None, "Directory of the grid (pretraining, cells, CSV, plot).")
  flags.DEFINE_string("pretrained", None, "Reuse this pretraining work dir instead of "
                      "pretraining into OUT/pretrain.")


def main(family: Family, argv: list[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}")
  if not FLAGS.out:
    raise ValueError("--out is required")
  cfg = FLAGS.config
  if cfg.get("task", "pretrain") != "pretrain":
    raise ValueError("the grid pretrains and then fine-tunes each cell itself; leave "
                     "--config.task at 'pretrain'")
  run_grid(family, cfg, FLAGS.out, FLAGS.pretrained)


def cli_main(family: Family) -> None:
  spec = os.path.join(config_lib.CONFIG_DIR, f"{family.name}.py:{family.default_preset}")
  cli.run(lambda argv: main(family, argv), lambda: define_flags(family),
          argv_check=lambda argv: config_lib.check_overrides(argv, spec))
