"""Does pretraining transfer? Learning curves over label budgets, one implementation for every
family (`bert_flax.transfer`, `t5x_lite.transfer` are thin modules over it).

  python -m bert_flax.transfer --out=DIR [--config=configs/bert.py:demo --config.a.b=v ...]
  python -m t5x_lite.transfer --out=DIR [--config=configs/t5.py:demo ...]

The grid: each label budget of `transfer.budgets` x init (the pretraining run, random) x seed
of `transfer.seeds` is one fine-tuning run (a "cell") in OUT/cells/<init>_n<budget>_s<seed>.
Pretraining (the config's `optimizer`/`train` sections) runs once into OUT/pretrain, or
`--pretrained=DIR` reuses another run. With `transfer.adapt_steps` > 0 (families that define
`adapt_text`), the pretrained model then continues its pretraining objective for that many
steps on the text of the whole labelled training split, labels unused, into OUT/adapt
(domain-/task-adaptive pretraining, Gururangan et al. 2020); the "pretrained" cells start there. A seed draws one order of the labelled training split;
budget n takes its first n examples, so subsets are nested (the 100 lie inside the 300) and
both inits of a seed see the same ones. Fine-tuning uses the config's `finetune` section, for
steps = clip(transfer.epochs x n / batch, transfer.min_steps, transfer.max_steps): small
budgets need many passes, the largest is capped by the 2-core budget. A finished cell
(cell.json) is skipped when the command is rerun, and a rerun may add budgets or seeds. Writes
OUT/transfer.csv (one row per finished cell of OUT, this run's and earlier runs'), OUT/transfer.png
(mean +- std per budget, the baseline drawn) and OUT/table.md (printed).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import glob
import json
import math
import os
import time
from typing import Any, Callable

from absl import flags
from ml_collections import ConfigDict, config_flags

from common import cli
from common import config as config_lib
from common.transfer_data import Examples, LabelledData, write_jsonl
from common import transfer_report as report
from common.rundir import RunDir
from common.transfer_report import INITS

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class Family:
  """What a model family plugs into the grid."""
  name: str                      # "bert": configs/<name>.py
  default_preset: str
  metric: str                    # the cell result the table and plot compare
  metric_name: str               # its axis label
  # The labelled examples of a role ("train", "validation", "test"), as JSON-able dicts.
  examples: Examples
  batch_size: Callable[[ConfigDict], int]
  pretrain: Callable[[ConfigDict, str], dict[str, float]]
  # (the cell's own copy of the config, finetune.init_from and seed set; data dir of
  # {role}.jsonl (`transfer_data.cell_data`); cell dir; steps) -> the cell's metrics
  finetune: Callable[[ConfigDict, str, str, int], dict[str, float]]
  baseline: Callable[[ConfigDict], tuple[str, float]]     # (what it is, its metric)
  extra: tuple[str, ...] = ()    # further cell results the table averages
  # Steps follow from epochs over the data (BERT fine-tuning): the cell's training file then
  # holds its subset repeated to fill them, in one epoch.
  repeat_data: bool = False
  # (config, training example) -> its unlabelled text, for adaptive pretraining
  # (`transfer.adapt_steps`).
  adapt_text: Callable[[ConfigDict, dict[str, Any]], str] | None = None


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


def _pretrain(family: Family, cfg: ConfigDict, out: str, name: str = "pretrain"
              ) -> tuple[str, dict]:
  """OUT/<name>, trained (or resumed) until done; its metrics are kept in <name>.json."""
  workdir = os.path.join(out, name)
  record = os.path.join(out, f"{name}.json")
  if os.path.exists(record) and RunDir(workdir).latest_step() == cfg.train.num_steps:
    with open(record) as f:
      return workdir, json.load(f)
  print(f"{name}: training {family.name} for {cfg.train.num_steps} steps in {workdir}",
        flush=True)
  t0 = time.time()
  metrics = family.pretrain(cfg, workdir) | {"steps": cfg.train.num_steps,
                                             "wall_s": round(time.time() - t0, 1)}
  with open(record, "w") as f:
    json.dump(metrics, f, indent=2)
  return workdir, metrics


def _adapt(family: Family, cfg: ConfigDict, out: str, pretrained: str, data: LabelledData
           ) -> tuple[str, dict]:
  """OUT/adapt: `transfer.adapt_steps` more pretraining steps from `pretrained` on the text of
  the labelled training split (validation split's text for its evaluation), or `pretrained`
  itself when adapt_steps is 0."""
  steps = cfg.transfer.get("adapt_steps", 0)
  if not steps:
    return pretrained, {}
  if family.adapt_text is None:
    raise ValueError(f"transfer.adapt_steps={steps}: the {family.name} grid has no adaptive "
                     "pretraining; set it to 0")
  corpus = os.path.join(data.dir, "adapt")
  os.makedirs(corpus, exist_ok=True)
  for role, rows in (("train", data.rows), ("validation", family.examples(cfg, "validation"))):
    write_jsonl(os.path.join(corpus, f"{role}.jsonl"),
                [{"text": family.adapt_text(cfg, r)} for r in rows])
  c = ConfigDict(cfg.to_dict())
  c.data.update(dataset=f"jsonl:{corpus}/{{split}}.jsonl", text_field="text",
                train_split="train", eval_split="validation", tokenizer="")
  c.finetune.init_from = pretrained  # its tokenizer too
  c.train.update(num_steps=steps, eval_every=steps, checkpoint_every=steps)
  workdir, metrics = _pretrain(family, c, out, "adapt")
  return workdir, metrics | {"from": pretrained}


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


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v}
  return out


def check_same_config(cfg: ConfigDict, out: str) -> None:
  """OUT/config.json records the grid's config; a rerun with another one (except the budgets
  and seeds, which extend the grid) would mix cells of two recipes, so it is refused."""
  path = os.path.join(out, "config.json")
  now = ConfigDict(cfg.to_dict())
  now.transfer.budgets, now.transfer.seeds = "", ""
  if os.path.exists(path):
    before = _flat(RunDir(out).config().to_dict())
    after = _flat(json.loads(now.to_json_best_effort()))
    diffs = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if diffs:
      raise ValueError(f"{out} holds a grid run with another config ({', '.join(diffs[:5])} "
                       "differ); use a new --out")
  else:
    config_lib.save_config(now, out)


def run_grid(family: Family, cfg: ConfigDict, out: str, pretrained: str | None = None
             ) -> list[dict[str, Any]]:
  """Every cell of the grid (finished ones skipped); writes the CSV, plot and table."""
  t = cfg.transfer
  seeds = parse_seeds(t.seeds)
  finetune_steps(t, 1, 1)  # checks the step bounds before anything runs
  pretrained = RunDir.find(pretrained).path if pretrained else None
  out = os.path.abspath(out)
  os.makedirs(out, exist_ok=True)
  check_same_config(cfg, out)
  data = LabelledData(family.examples, cfg, out)
  budgets = parse_budgets(t.budgets, len(data.rows))
  if pretrained:
    pre_metrics = {"reused": pretrained}
  else:
    pretrained, pre_metrics = _pretrain(family, cfg, out)
  print(f"pretraining: {json.dumps(pre_metrics)}", flush=True)
  pretrained, adapt_metrics = _adapt(family, cfg, out, pretrained, data)
  if adapt_metrics:
    pre_metrics = pre_metrics | {"adapt": adapt_metrics}
    print(f"adaptive pretraining: {json.dumps(adapt_metrics)}", flush=True)
  rows = []
  for seed in seeds:
    for n in budgets:
      for init in INITS:
        row = run_cell(family, cfg, data, pretrained, init, n, seed, os.path.join(out, "cells"))
        what = "done before" if row.pop("skipped", False) else f"{row['wall_s'] / 60:.1f} min"
        print(f"cell {init:10s} n={n:<6d} seed {seed}: {family.metric} "
              f"{row[family.metric]:.4f} ({what})", flush=True)
        rows.append(row)
  write_outputs(family, cfg, out, finished_cells(out), pre_metrics)
  return rows


def finished_cells(out: str) -> list[dict[str, Any]]:
  """Every finished cell of OUT by (budget, seed, init): a rerun for one budget still reports
  the whole grid (`check_same_config` keeps OUT to one recipe)."""
  rows = []
  for path in glob.glob(os.path.join(out, "cells", "*", "cell.json")):
    with open(path) as f:
      rows.append(json.load(f))
  return sorted(rows, key=lambda r: (r["budget"], r["seed"], INITS.index(r["init"])))


def write_outputs(family: Family, cfg: ConfigDict, out: str, rows: list[dict[str, Any]],
                  pre_metrics: dict) -> None:
  keys = list(dict.fromkeys(k for r in rows for k in r))
  with open(os.path.join(out, "transfer.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
  baseline = family.baseline(cfg)
  summary = report.summarize(rows, family.metric, family.extra)
  text = report.table(summary, family.metric, family.extra, baseline)
  text += f"\npretraining: {json.dumps(pre_metrics)}"
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(text + "\n")
  report.plot(summary, rows, family.metric, family.metric_name,
              f"{family.name}: fine-tuned from pretraining vs random init", baseline,
              os.path.join(out, "transfer.png"))
  print("\n" + text, flush=True)


def define_flags(family: Family) -> None:
  spec = os.path.join(config_lib.CONFIG_DIR, f"{family.name}.py:{family.default_preset}")
  config_flags.DEFINE_config_file("config", spec, f"{family.name} config file[:preset]; "
                                  "pretraining and fine-tuning settings, and `transfer`")
  flags.DEFINE_string("out", None, "Directory of the grid (pretraining, cells, CSV, plot).")
  flags.DEFINE_string("pretrained", None, "Reuse this pretraining work dir instead of "
                      "pretraining into OUT/pretrain.")


def main(family: Family) -> None:
  if not FLAGS.out:
    raise ValueError("--out is required")
  cfg = FLAGS.config
  if cfg.get("task", "pretrain") != "pretrain":
    raise ValueError("the grid pretrains and then fine-tunes each cell itself; leave "
                     "--config.task at 'pretrain'")
  run_grid(family, cfg, FLAGS.out, FLAGS.pretrained)


def cli_main(family: Family) -> None:
  spec = os.path.join(config_lib.CONFIG_DIR, f"{family.name}.py:{family.default_preset}")
  cli.run(lambda: main(family), lambda: define_flags(family),
          argv_check=lambda argv: config_lib.check_overrides(argv, spec))
