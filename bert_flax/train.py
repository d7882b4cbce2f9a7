"""BERT pretraining and fine-tuning: `python -m bert_flax.train --config=configs/bert.py:<preset>
--workdir=DIR`.

task=pretrain (default): masked-LM (+ NSP with --config.pretrain.nsp) on packed rows of
config.data; reports validation MLM loss and accuracy.
task=classify / regress: loads the encoder of `finetune.init_from` (a pretraining work dir;
empty = random init), adds a fresh head and fine-tunes it on `classify.dataset` for
`classify.epochs` epochs with the `finetune` section's learning rate and warmup; reports
accuracy (and, for two classes, F1 of the second label, named) on validation every epoch and on test at the end, next to
the majority-class baseline. Results also go to DIR/results.json.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Any

import jax
from ml_collections import ConfigDict

from bert_flax.data import pretrain_dataset
from bert_flax.masking import masking_config
from bert_flax.model import TASKS, BertClassifierModel, BertPretrainModel
from common import config as config_lib
from common import entry, steps, train_state, trainer
from common.data import classification as cls_data
from common.data import workers
from common.data.sources import parse_split, split_range
from common.rundir import RunDir


def run(cfg: ConfigDict, workdir: str, *, prepare: bool = False) -> trainer.TrainResult:
  if cfg.task not in TASKS:
    raise ValueError(f"unknown task {cfg.task!r}; valid: {', '.join(TASKS)}")
  if cfg.task == "pretrain":
    return pretrain(cfg, workdir, prepare=prepare)
  return finetune(cfg, workdir)


def _check_seq_len(seq_len: int, cfg: ConfigDict, what: str) -> None:
  if seq_len > cfg.model.max_len:
    raise ValueError(f"{what}={seq_len} exceeds model.max_len={cfg.model.max_len} positions")


def pretrain(cfg: ConfigDict, workdir: str, *, prepare: bool = False) -> trainer.TrainResult:
  """Masked-LM pretraining; returns the trainer's result (used by tests and scripts)."""
  if prepare:
    entry.prepare_data(cfg)
  d, p = cfg.data, cfg.pretrain
  _check_seq_len(d.seq_len, cfg, "data.seq_len")
  train_source = entry.open_data(cfg, d.train_split)  # a missing dataset fails before anything
  vocab = entry.run_vocab(cfg)
  masking = masking_config(vocab, max_predictions=p.max_predictions, rate=p.mask_rate,
                           mask_frac=p.mask_token_frac, random_frac=p.random_token_frac,
                           whole_word=p.whole_word)

  def make_iter(split: str, *, train: bool):
    source = train_source if split == d.train_split else entry.open_data(cfg, split)
    make = lambda lanes: pretrain_dataset(
        source, vocab, text_field=d.text_field, seq_len=d.seq_len,
        batch_size=cfg.train.batch_size, seed=cfg.seed, masking=masking, nsp=p.nsp,
        shuffle=train and d.shuffle, num_epochs=None if train else 1,
        num_packing_bins=p.packing_bins, dataset_name=f"{d.dataset}:{split}", lanes=lanes)
    return workers.parallel(make, cfg.train.batch_size, d.num_workers if train else 0)

  result = trainer.train(
      BertPretrainModel(cfg), cfg, workdir,
      make_train_iter=lambda: make_iter(d.train_split, train=True),
      make_eval_iter=lambda: make_iter(d.eval_split, train=False),
      init_from=cfg.finetune.init_from or None,  # continued (e.g. domain-adaptive) pretraining
      on_start=lambda: RunDir(workdir).record(cfg, vocab),
      start_metrics=entry.skipped_records(train_source))
  ev = result.eval_metrics
  line = (f"validation ({d.eval_split}): MLM loss {ev['mlm_loss']:.4f}, MLM accuracy "
          f"{ev['correct']:.4f} over {int(ev['tokens'])} tokens")
  if p.nsp:
    line += f"; NSP loss {ev['nsp_loss']:.4f}, NSP accuracy {ev['nsp_accuracy']:.4f}"
  print(line, flush=True)
  return result


def finetune_config(cfg: ConfigDict, n_train: int, n_eval: int) -> ConfigDict:
  """Trainer config for fine-tuning: the `classify` section's batch, length and epochs (eval
  and checkpoint once per epoch), the `finetune` section's schedule."""
  c = cfg.classify
  out = ConfigDict(cfg.to_dict())
  steps_per_epoch = n_train // c.batch_size
  if steps_per_epoch < 1:
    raise ValueError(f"the training split has {n_train} examples, fewer than one batch of "
                     f"classify.batch_size={c.batch_size}")
  if c.epochs < 1:
    raise ValueError(f"classify.epochs={c.epochs} must be >= 1")
  steps = c.epochs * steps_per_epoch
  out.data.seq_len = c.seq_len
  out.train.update(batch_size=c.batch_size, num_steps=steps, eval_every=steps_per_epoch,
                   checkpoint_every=steps_per_epoch, grad_accum_steps=1,
                   log_every=max(1, min(cfg.train.log_every, steps_per_epoch)),
                   eval_batches=cls_data.num_batches(n_eval, c.batch_size))
  return config_lib.resolve_finetune(out)


def _check_data_section(cfg: ConfigDict) -> None:
  """Fine-tuning reads its examples from the `classify` section only; a `data.dataset` set
  for it would otherwise be ignored without a word."""
  pretraining = config_lib.base_config().data.dataset
  if cfg.data.dataset not in (pretraining, cfg.classify.dataset):
    raise ValueError(f"task={cfg.task} reads its examples from classify.dataset "
                     f"({cfg.classify.dataset!r}), not data.dataset ({cfg.data.dataset!r}, "
                     f"for pretraining): pass --config.classify.dataset={cfg.data.dataset} "
                     "(and classify.text_field / label_field / *_split)")


def _check_disjoint(splits: dict[str, str]) -> None:
  """Evaluation examples must not be training examples: splits carved from one split
  (`train[:90%]`, `train[90%:]`) must not overlap. Positions are compared as in a large split
  (percentages and counts at the ends cannot then collide by rounding)."""
  n = 10**9
  named = [(role, split, *parse_split(split)[:1], split_range(split, n))
           for role, split in splits.items() if split]
  for i, (role_a, split_a, name_a, (lo_a, hi_a)) in enumerate(named):
    for role_b, split_b, name_b, (lo_b, hi_b) in named[i + 1:]:
      if name_a == name_b and lo_a < hi_b and lo_b < hi_a:
        raise ValueError(
            f"classify {role_a} split {split_a!r} and {role_b} split {split_b!r} share "
            f"examples; carve disjoint ones, e.g. --config.classify.train_split='{name_a}[:90%]' "
            f"--config.classify.eval_split='{name_a}[90%:]'")


def _summary(m: dict[str, float], num_labels: int) -> dict[str, float]:
  if num_labels == 1:
    return {"mse": m["loss"], "mae": m["abs_error"]}
  out = {"loss": m["loss"], "accuracy": m["correct"]}
  if num_labels == 2:
    tp, fp, fn = m["true_pos"], m["false_pos"], m["false_neg"]
    out["f1"] = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn > 0 else 0.0
  return out


def _fmt(m: dict[str, float], positive: str | None = None) -> str:
  """Metrics on one line; F1 names the class it treats as positive (label index 1)."""
  return ", ".join(f"{k} ({positive!r} positive) {v:.4f}" if k == "f1" and positive else
                   f"{k} {v:.4f}" for k, v in m.items())


def finetune(cfg: ConfigDict, workdir: str) -> trainer.TrainResult:
  """Fine-tune on labelled text; the result's eval_metrics hold validation and test_* metrics."""
  c = cfg.classify
  regression = cfg.task == "regress"
  _check_seq_len(c.seq_len, cfg, "classify.seq_len")
  _check_data_section(cfg)
  fields = cls_data.Fields(text=c.text_field, label=c.label_field, text_pair=c.text_pair_field)
  splits = {"train": c.train_split, "validation": c.eval_split, "test": c.test_split}
  _check_disjoint(splits)
  sources: dict[str, Any] = {}
  columns: dict[str, list] = {}
  for role, split in splits.items():
    if not split:
      continue
    where = f"{c.dataset} split {split!r}"
    sources[role] = cls_data.open_examples(c.dataset, split, cfg.data.data_dir)
    fields.check(sources[role][0], where)
    columns[role] = cls_data.read_column(sources[role], c.label_field, where)
  if "validation" not in sources:
    raise ValueError("classify.eval_split is empty; fine-tuning evaluates on it every epoch")
  labels = None
  if not regression:
    labels = (cls_data.LabelMap.parse(c.labels) if c.labels
              else cls_data.LabelMap.infer(columns["train"]))
  for role, values in columns.items():
    cls_data.check_labels(values, labels, f"{c.dataset} split {splits[role]!r}")
  num_labels = 1 if regression else len(labels)
  positive = labels.names[1] if num_labels == 2 else None

  vocab = entry.run_vocab(cfg)
  ft = finetune_config(cfg, len(sources["train"]), len(sources["validation"]))
  model = BertClassifierModel(ft, num_labels)
  batch = ft.train.batch_size

  def make_iter(role: str, *, train: bool):
    return cls_data.classification_dataset(
        sources[role], vocab, fields=fields, labels=labels, seq_len=c.seq_len, batch_size=batch,
        seed=cfg.seed, train=train, dataset_name=f"{c.dataset}:{splits[role]}")

  eval_step: list = []

  def evaluate(role: str, state: dict, setup: train_state.Setup) -> dict[str, float]:
    if not eval_step:
      eval_step.append(steps.make_eval_step(setup))
    m = steps.evaluate(eval_step[0], state["params"], make_iter(role, train=False),
                         cls_data.num_batches(len(sources[role]), batch))
    return _summary(m, num_labels)

  def extra_eval(step: int, state: dict, setup: train_state.Setup) -> dict[str, float]:
    out = evaluate("validation", state, setup)
    epoch = step / ft.train.eval_every
    print(f"epoch {epoch:g} | validation ({c.eval_split}): {_fmt(out, positive)}", flush=True)
    if step >= ft.train.num_steps and "test" in sources:
      test = evaluate("test", state, setup)
      print(f"test ({c.test_split}): {_fmt(test, positive)}", flush=True)
      out |= {f"test_{k}": v for k, v in test.items()}
    return out

  def on_start() -> None:
    RunDir(workdir).record(ft, vocab)
    if jax.process_index() == 0:
      with open(os.path.join(workdir, "labels.json"), "w") as f:
        json.dump({"task": cfg.task, "labels": list(labels.names) if labels else None}, f)

  result = trainer.train(
      model, ft, workdir, make_train_iter=lambda: make_iter("train", train=True),
      make_eval_iter=lambda: make_iter("validation", train=False),
      init_from=cfg.finetune.init_from or None, on_start=on_start, extra_eval=extra_eval)
  _report(result, cfg, workdir, labels, columns, sources)
  return result


def _report(result: trainer.TrainResult, cfg: ConfigDict, workdir: str,
            labels: cls_data.LabelMap | None, columns: dict, sources: dict) -> None:
  """Final metrics next to the majority-class baseline (the training split's commonest label)."""
  ev = result.eval_metrics
  report: dict[str, Any] = {
      "task": cfg.task, "dataset": cfg.classify.dataset, "init_from": cfg.finetune.init_from,
      "examples": {role: len(src) for role, src in sources.items()},
      "validation": {k: v for k, v in ev.items() if k in ("loss", "accuracy", "f1", "mse", "mae")},
      "test": {k[5:]: v for k, v in ev.items() if k.startswith("test_")}}
  if labels is not None and len(labels.names) == 2:
    report["f1_positive_label"] = labels.names[1]
  if labels is not None:
    majority = collections.Counter(cls_data.label_key(v) for v in columns["train"]).most_common(1)
    report["majority_label"] = majority[0][0]
    report["majority_baseline"] = {
        role: sum(cls_data.label_key(v) == majority[0][0] for v in values) / len(values)
        for role, values in columns.items() if role != "train"}
    print(f"majority-class baseline (always {majority[0][0]!r}): "
          + ", ".join(f"{r} accuracy {a:.4f}" for r, a in report["majority_baseline"].items()),
          flush=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(report, f, indent=2)


cli_main = entry.make_cli(run, "bert", "demo")


if __name__ == "__main__":
  cli_main()
