"""Input pipeline throughput per family: tokenize + pack + batch (+ BERT masking, T5 span
corruption), tokens/s in the training process and with `data.num_workers` worker processes.

Each family's training pipeline, exactly as its trainer builds it (`common.data.workers.
parallel` over the family's dataset function), on the Debian corpus with the quickstart's
tokenizer, at a published preset's row shape: GPT 124m (1024 tokens), BERT base (128,
max_predictions 20), T5 base (512 encoder tokens, span corruption). Tokens counted are row
positions (the model's tokens per step: what `--plan`'s tokens/s per host is in) and, beside
them, non-padding tokens. Workers are interleaved per family, fresh iterators each time, the
first batches (startup, tokenizer load, fork) excluded from the timing.

  PYTHONPATH=. python benchmarks/pipeline_throughput.py                  # ~3 minutes, 2 cores
  PYTHONPATH=. python benchmarks/pipeline_throughput.py --families gpt --workers 0,2 --seconds 5

Needs the prepared Debian corpus and its tokenizer: `bash quickstart.sh` (or `python -m
gpt_flax.train --prepare ...`) makes both.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Any, Callable

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from bert_flax.data import pretrain_dataset  # noqa: E402
from bert_flax.masking import masking_config  # noqa: E402
from common.config import DEFAULT_DATA_DIR  # noqa: E402
from common.data import workers  # noqa: E402
from common.data.pipeline import lm_dataset  # noqa: E402
from common.data.sources import open_source  # noqa: E402
from common.vocab import SentencePieceVocab, load_vocab  # noqa: E402
from t5x_lite.span_corruption import span_corruption_dataset  # noqa: E402

# family -> (preset it mirrors, feature whose positions count as tokens, its row length)
SHAPES = {"gpt": ("gpt 124m", "targets", 1024), "bert": ("bert base", "tokens", 128),
          "t5": ("t5 base", "encoder_input_tokens", 512)}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--families", default="gpt,bert,t5")
  p.add_argument("--workers", default="0,1,2", help="data.num_workers values to compare")
  p.add_argument("--batch_size", type=int, default=32, help="rows per batch (this host's)")
  p.add_argument("--seconds", type=float, default=12.0, help="timed seconds per run")
  p.add_argument("--trials", type=int, default=2)
  p.add_argument("--data_dir", default=DEFAULT_DATA_DIR)
  p.add_argument("--dataset", default="debian")
  p.add_argument("--text_field", default="text")
  p.add_argument("--tokenizer", default=None, help="default: DATA_DIR/tokenizers/debian_sp8k.model")
  return p.parse_args(argv)


def makers(args: argparse.Namespace) -> dict[str, Callable[[range], Any]]:
  """family -> make(lanes), the trainers' dataset calls at the SHAPES row lengths."""
  source = open_source(args.dataset, "train", args.data_dir)
  tok = args.tokenizer or os.path.join(args.data_dir, "tokenizers", "debian_sp8k.model")
  vocab, t5_vocab = load_vocab(tok), SentencePieceVocab(tok, extra_ids=100)
  b, name = args.batch_size, f"{args.dataset}:train"
  common = dict(batch_size=b, seed=0, shuffle=True, dataset_name=name)
  masking = masking_config(vocab, max_predictions=20)
  return {
      "gpt": lambda lanes: lm_dataset(source, vocab, text_field=args.text_field,
                                      seq_len=SHAPES["gpt"][2], lanes=lanes, **common),
      "bert": lambda lanes: pretrain_dataset(source, vocab, text_field=args.text_field,
                                             seq_len=SHAPES["bert"][2], masking=masking,
                                             lanes=lanes, **common),
      "t5": lambda lanes: span_corruption_dataset(source, t5_vocab, text_field=args.text_field,
                                                  input_len=SHAPES["t5"][2], lanes=lanes,
                                                  **common)[0],
  }


def measure(make: Callable[[range], Any], batch_size: int, num_workers: int, key: str,
            seconds: float) -> tuple[float, float, float]:
  """(rows/s, token positions/s, non-padding tokens/s) after 2 warm-up batches."""
  it = workers.parallel(make, batch_size, num_workers)
  try:
    for _ in range(2):
      next(it)
    rows = real = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
      batch = next(it)
      rows += batch[key].shape[0]
      real += int(np.count_nonzero(batch[key]))
    elapsed = time.perf_counter() - start
  finally:
    if hasattr(it, "close"):
      it.close()
  return rows / elapsed, rows * batch[key].shape[1] / elapsed, real / elapsed


def main(argv=None) -> None:
  args = parse_args(argv)
  families = args.families.split(",")
  counts = [int(w) for w in args.workers.split(",")]
  make = makers(args)
  print(f"# {platform.node()} {os.cpu_count()} cores, {platform.processor() or platform.machine()}"
        f"; batch {args.batch_size} rows, {args.seconds:g} s x {args.trials} trials, "
        f"{time.strftime('%Y-%m-%d')}")
  print(f"{'family':6} {'rows as':11} {'workers':>7} {'rows/s':>8} {'tokens/s':>10} "
        f"{'non-pad tok/s':>13} {'tok/s per core':>14}")
  for fam in families:
    preset, key, _ = SHAPES[fam]
    results: dict[int, list[tuple[float, float, float]]] = {w: [] for w in counts}
    for _ in range(args.trials):
      for w in counts:
        results[w].append(measure(make[fam], args.batch_size, w, key, args.seconds))
    for w in counts:
      rows_s, tok_s, real_s = (float(np.median([r[i] for r in results[w]])) for i in range(3))
      cores = max(w, 1)
      print(f"{fam:6} {preset:11} {w:>7} {rows_s:>8.1f} {tok_s:>10,.0f} {real_s:>13,.0f} "
            f"{tok_s / cores:>14,.0f}", flush=True)


if __name__ == "__main__":
  main()
