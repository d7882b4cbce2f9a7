"""T5 learning curves: test ROUGE of description -> synopsis after fine-tuning on 100 ... all
pairs, from the span-corruption pretraining vs from random init (the grid is
`common.transfer`'s).

  python -m t5x_lite.transfer --out=workdirs/t5_transfer [--config=configs/t5.py:demo
      --config.transfer.seeds=0,1 --config.transfer.budgets=100,300,1000,3000,all
      --pretrained=DIR]

Cells fine-tune with `task=summarize` (the `finetune` section's schedule), then decode the
first `transfer.test_examples` test inputs with the `infer` section's beam search and report
ROUGE and how many distinct outputs they gave; the baseline is the first k words of the
input, k the median synopsis length (in words) of the training split.
"""

from __future__ import annotations

import statistics
from typing import Any

from ml_collections import ConfigDict

from common import entry, transfer, transfer_data
from common.data.seq2seq import field_text
from common.data.sources import open_source
from common.rouge import rouge
from t5x_lite import tasks, train
from t5x_lite.decode import predict_ids

# JSONL fields of the grid's data; the dataset's own field names are resolved by tasks.fields.
INPUT, TARGET = "input", "target"


def examples(cfg: ConfigDict, role: str) -> list[dict[str, Any]]:
  d = cfg.data
  split = {"train": d.train_split, "validation": d.eval_split, "test": d.test_split}[role]
  source = open_source(d.dataset, split, d.data_dir)
  inp, tgt = tasks.fields(d)
  return [{INPUT: field_text(ex, inp, "input"), TARGET: field_text(ex, tgt, "target")}
          for ex in source.__getitems__(list(range(len(source))))]


def _test_items(cfg: ConfigDict) -> list[dict[str, Any]]:
  n = cfg.transfer.test_examples
  return examples(cfg, "test")[:n] if n > 0 else examples(cfg, "test")


def pretrain(cfg: ConfigDict, workdir: str) -> dict[str, float]:
  ev = train.run(cfg, workdir).eval_metrics
  return {"loss": ev["loss"], "token_accuracy": ev["correct"]}


def finetune(c: ConfigDict, data_dir: str, cell: str, steps: int) -> dict[str, float]:
  """`steps` of summarize fine-tuning, then beam search on the test items."""
  c.task = "summarize"
  c.data.update(**transfer_data.cell_data(data_dir), input_field=INPUT, target_field=TARGET,
                truncate_targets=True)  # a subset's longest synopsis
  # may pass max_target_len: training truncates it, ROUGE still scores the full reference
  c.train.update(num_steps=steps, eval_every=steps, checkpoint_every=steps,
                 log_every=min(c.train.log_every, steps))
  c.rouge.num_examples = 0  # the test decoding below is the cell's evaluation
  result = train.run(c, cell)
  vocab = entry.run_vocab(c, extra_ids=c.data.extra_ids)
  _, ids, targets = tasks.text_examples(c, vocab, "test", c.transfer.test_examples)
  i = c.infer
  outs = predict_ids(result.setup.graphdef, result.state["params"], ids,
                     input_len=c.data.max_input_len, max_decode_len=i.max_decode_len,
                     batch_size=i.batch_size, eos_id=vocab.eos_id, beam_size=i.beam_size,
                     alpha=i.alpha, vocab_size=vocab.vocab_size,
                     partitioner=result.setup.partitioner)
  preds = [vocab.decode(o) for o in outs]
  scores = rouge(preds, targets)
  print(f"test ({len(preds)} inputs, beam {i.beam_size}, alpha {i.alpha}): "
        + ", ".join(f"{k} {v:.2f}" for k, v in scores.items())
        + f"; distinct outputs {len(set(preds))}", flush=True)
  return {"steps": steps, "validation_loss": result.eval_metrics["loss"],
          **{f"test_{k}": v for k, v in scores.items()},
          "distinct_outputs": len(set(preds)) / len(preds)}


def baseline(cfg: ConfigDict) -> tuple[str, float]:
  """ROUGE-L of the input's first k words, k the median training synopsis length."""
  k = int(statistics.median(len(r[TARGET].split()) for r in examples(cfg, "train")))
  test = _test_items(cfg)
  lead = [" ".join(r[INPUT].split()[:k]) for r in test]
  return f"first {k} words of the input", rouge(lead, [r[TARGET] for r in test])["rougeL"]


FAMILY = transfer.Family(
    name="t5", default_preset="demo", metric="test_rougeL",
    metric_name="test ROUGE-L (beam search)", examples=examples,
    batch_size=lambda cfg: cfg.train.batch_size, pretrain=pretrain, finetune=finetune,
    baseline=baseline)


def cli_main() -> None:
  transfer.cli_main(FAMILY)


if __name__ == "__main__":
  cli_main()
