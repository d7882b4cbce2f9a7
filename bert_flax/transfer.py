"""BERT learning curves: sentiment accuracy after fine-tuning on 100 ... all labels, from the
masked-LM pretraining vs from random init (the grid is `common.transfer`'s).

  python -m bert_flax.transfer --out=workdirs/bert_transfer [--config=configs/bert.py:demo
      --config.transfer.seeds=0,1,2 --config.transfer.budgets=100,300,1000,3000,all
      --pretrained=DIR]

Cells fine-tune with `task=classify` on the `classify` section's dataset and fields, the
`finetune` section's schedule, and report test accuracy (and F1), with the training split's
majority class as the baseline.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any

from ml_collections import ConfigDict

from bert_flax import train
from common import transfer, transfer_data
from common.data import classification as cls_data

ROLES = {"train": "train_split", "validation": "eval_split", "test": "test_split"}


def _fields(c: ConfigDict) -> list[str]:
  return [f for f in (c.text_field, c.text_pair_field, c.label_field) if f]


def examples(cfg: ConfigDict, role: str) -> list[dict[str, Any]]:
  c = cfg.classify
  split = c[ROLES[role]]
  if not split:
    raise ValueError(f"classify.{ROLES[role]} is empty; the grid reports {role} results")
  source = cls_data.open_examples(c.dataset, split, cfg.data.data_dir)
  rows = source.__getitems__(list(range(len(source))))
  cls_data.Fields(text=c.text_field, label=c.label_field, text_pair=c.text_pair_field).check(
      rows[0], f"{c.dataset} split {split!r}")
  return [{k: transfer_data.jsonable(ex[k]) for k in _fields(c)} for ex in rows]


def _labels(cfg: ConfigDict) -> str:
  """The label set of the full training split, fixed for every cell (a small subset could
  miss a class)."""
  c = cfg.classify
  if c.labels:
    return c.labels
  train_rows = examples(cfg, "train")
  return ",".join(cls_data.LabelMap.infer([r[c.label_field] for r in train_rows]).names)


def pretrain(cfg: ConfigDict, workdir: str) -> dict[str, float]:
  ev = train.pretrain(cfg, workdir).eval_metrics
  return {"mlm_loss": ev["mlm_loss"], "mlm_accuracy": ev["correct"]}


def finetune(cfg: ConfigDict, data_dir: str, cell: str, steps: int) -> dict[str, float]:
  """One epoch over the cell's training file (its subset repeated to fill `steps`)."""
  cfg.task = "classify"
  cfg.classify.update(**transfer_data.cell_data(data_dir), epochs=1, labels=_labels(cfg))
  cfg.data.dataset = cfg.classify.dataset  # the pretraining dataset is not this run's data
  result = train.run(cfg, cell)
  with open(os.path.join(cell, "results.json")) as f:
    report = json.load(f)
  out = {"steps": result.history[-1]["step"] if result.history else 0,
         "test_accuracy": report["test"]["accuracy"],
         "validation_accuracy": report["validation"]["accuracy"]}
  if "f1" in report["test"]:
    out["test_f1"] = report["test"]["f1"]
  return out


def baseline(cfg: ConfigDict) -> tuple[str, float]:
  """Test accuracy of always answering the full training split's majority class."""
  label = cfg.classify.label_field
  key = lambda r: cls_data.label_key(r[label])
  majority = collections.Counter(map(key, examples(cfg, "train"))).most_common(1)[0][0]
  test = examples(cfg, "test")
  return (f"majority class ({majority!r})",
          sum(key(r) == majority for r in test) / len(test))


def adapt_text(cfg: ConfigDict, example: dict[str, Any]) -> str:
  """A training example's text (both texts of a pair), its label left out."""
  c = cfg.classify
  return " ".join(example[f] for f in (c.text_field, c.text_pair_field) if f)


FAMILY = transfer.Family(
    name="bert", default_preset="demo", metric="test_accuracy", metric_name="test accuracy",
    examples=examples, batch_size=lambda cfg: cfg.classify.batch_size, pretrain=pretrain,
    finetune=finetune, baseline=baseline, repeat_data=True, adapt_text=adapt_text)


def cli_main() -> None:
  transfer.cli_main(FAMILY)


if __name__ == "__main__":
  cli_main()
