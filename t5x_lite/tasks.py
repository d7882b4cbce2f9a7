"""What the T5 trainer feeds: span-corruption pretraining or a text-to-text task, chosen by
`config.task`, with the dataset's input/target fields resolved and checked."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from ml_collections import ConfigDict

from common import entry
from common.data import workers
from common.data.seq2seq import field_text, fit_length, seq2seq_dataset, text_pair_fn
from common.vocab import Vocabulary
from t5x_lite.span_corruption import span_corruption_dataset

TASKS = ("pretrain", "summarize")
# Input and target fields of datasets this library knows, used when data.input_field /
# data.target_field are left empty.
KNOWN_FIELDS = {"debian": ("text", "synopsis"), "tfds:cnn_dailymail": ("article", "highlights"),
                "tfds:xsum": ("document", "summary")}


def check_task(cfg: ConfigDict) -> None:
  if cfg.task not in TASKS:
    raise ValueError(f"unknown task {cfg.task!r}; valid: {list(TASKS)}")


def fields(d: ConfigDict) -> tuple[str, str]:
  """(input field, target field): the configured ones, else the dataset's known ones."""
  if d.input_field and d.target_field:
    return d.input_field, d.target_field
  known = KNOWN_FIELDS.get(d.dataset) or KNOWN_FIELDS.get(d.dataset.split("/")[0])
  if known is None:
    raise ValueError(f"dataset {d.dataset!r} has no known input/target fields; set "
                     "--config.data.input_field=FIELD and --config.data.target_field=FIELD")
  return d.input_field or known[0], d.target_field or known[1]


def check_fields(example: dict[str, Any], d: ConfigDict) -> None:
  """Fails at once (not deep in a pipeline thread) on field names the data does not have."""
  inp, tgt = fields(d)
  field_text(example, inp, "input")
  field_text(example, tgt, "target")


def lengths(cfg: ConfigDict) -> tuple[int, int]:
  """(encoder length, decoder length): for pretraining the targets follow from the inputs."""
  d = cfg.data
  if cfg.task == "pretrain":
    from t5x_lite.span_corruption import random_spans_helper  # pylint: disable=g-import-not-at-top
    return d.max_input_len, random_spans_helper(d.max_input_len)[1]
  return d.max_input_len, d.max_target_len


def make_iter_fn(cfg: ConfigDict, vocab: Vocabulary, split: str, *, train: bool
                 ) -> Callable[[], Any]:
  d = cfg.data

  def make():
    source = entry.open_data(cfg, split)
    name = f"{d.dataset}:{split}"
    common = dict(batch_size=cfg.train.batch_size, seed=cfg.seed, shuffle=train and d.shuffle,
                  num_epochs=None if train else 1, dataset_name=name)
    if cfg.task == "pretrain":
      rows = lambda lanes: span_corruption_dataset(
          source, vocab, text_field=d.text_field, input_len=d.max_input_len, lanes=lanes,
          **common)[0]
    else:
      inp, tgt = fields(d)
      fn = text_pair_fn(vocab, input_field=inp, target_field=tgt, prefix=d.prefix,
                        max_input_len=d.max_input_len, max_target_len=d.max_target_len,
                        truncate_inputs=d.truncate_inputs, truncate_targets=d.truncate_targets)
      rows = lambda lanes: seq2seq_dataset(source, fn, input_len=d.max_input_len,
                                           target_len=d.max_target_len, pack=d.pack,
                                           lanes=lanes, **common)
    return workers.parallel(rows, cfg.train.batch_size, d.num_workers if train else 0)
  return make


def text_examples(cfg: ConfigDict, vocab: Vocabulary, split: str, num: int
                  ) -> tuple[list[str], list[np.ndarray], list[str]]:
  """The first `num` examples of a split (all if num <= 0): (input texts, encoder ids, target
  texts). Inputs are truncated to the encoder length like in training."""
  d = cfg.data
  source = entry.open_data(cfg, split)
  n = len(source) if num <= 0 else min(num, len(source))
  inp, tgt = fields(d)
  examples = source.__getitems__(list(range(n)))
  texts = [field_text(ex, inp, "input") for ex in examples]
  targets = [field_text(ex, tgt, "target") for ex in examples]
  ids = [fit_length(vocab.encode(d.prefix + t), d.max_input_len, vocab.eos_id,
                    truncate=d.truncate_inputs, role="input") for t in texts]
  return texts, ids, targets
