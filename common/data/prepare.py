"""Fetch and build a dataset once, so training jobs only read it.

  python -m common.data.prepare --dataset=debian --data_dir=DIR      # apt (root)
  python -m common.data.prepare --dataset=sentiment --data_dir=DIR   # pip download

Idempotent: an already prepared dataset is reported, not rebuilt.
"""
from __future__ import annotations

import time

from absl import flags

from common import cli
from common.config import DEFAULT_DATA_DIR

DATASETS = ("debian", "sentiment")


def main() -> None:
  f = flags.FLAGS
  if f.dataset not in DATASETS:
    raise ValueError(f"--dataset={f.dataset} cannot be prepared here; choices: {DATASETS} "
                     "(tfds:/jsonl:/text: specs are read as they are)")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from common.data import debian, sentiment  # pylint: disable=g-import-not-at-top

  tfds.disable_progress_bar()
  start = time.time()
  if f.dataset == "sentiment":
    builder = sentiment.prepare_sentiment(f.data_dir)
    raw = f"raw sdist extract in {sentiment.raw_dir_for(f.data_dir)}"
  else:
    builder = debian.prepare_debian(f.data_dir)
    raw = f"raw apt snapshot in {debian.raw_dir_for(f.data_dir)}"
  splits = {name: info.num_examples for name, info in sorted(builder.info.splits.items())}
  print(f"{f.dataset}: {splits} ({sum(splits.values())} examples) in {builder.data_dir} "
        f"[{time.time() - start:.1f}s]; {raw}")


def define_flags() -> None:
  flags.DEFINE_string("dataset", "debian", f"dataset to prepare: {DATASETS}")
  flags.DEFINE_string("data_dir", DEFAULT_DATA_DIR, "where prepared datasets live")


def cli_main() -> None:
  cli.run(main, define_flags)


if __name__ == "__main__":
  cli_main()
