"""Train a SentencePiece vocabulary (pad 0 / eos 1 / unk 2 / bos 3) from a dataset.

  python -m common.tokenizer --dataset=debian --data_dir=DIR --vocab_size=8000 \\
      --output=DIR/tokenizers/debian_sp8k.model

Writes PATH.model atomically and PATH.json with provenance (dataset, documents, sha256, ...).
Training is deterministic for a given corpus, seed and num_threads.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
from typing import Any, Iterable, Iterator

import numpy as np
import sentencepiece as spm
from absl import flags

from common import cli
from common.config import DEFAULT_DATA_DIR

from common.vocab import (BOS_ID, CONTROL_SYMBOLS, EOS_ID, PAD_ID, UNK_ID, SentencePieceVocab,
                          atomic_write_bytes, sidecar_path)


def _lines(texts: Iterable[str], counter: list[int]) -> Iterator[str]:
  """One training sentence per non-empty line (paragraphs), so few exceed max_sentence_length."""
  for text in texts:
    for line in text.split("\n"):
      if line.strip():
        counter[0] += 1
        yield line


def train_sentencepiece(texts: Iterable[str], output_path: str, vocab_size: int,
                        model_type: str = "unigram", seed: int = 0, num_threads: int = 2,
                        character_coverage: float = 0.9995,
                        metadata: dict[str, Any] | None = None) -> str:
  """Train on every line of `texts`; write `output_path` + its JSON sidecar; return the path.

  Uses all input (no SentencePiece-side sampling or shuffling), a fixed seed and a fixed
  thread count, so the same corpus gives the same model bytes. Sample the corpus beforehand.
  """
  if not output_path.endswith(".model"):
    raise ValueError(f"output path must end with .model, got {output_path!r}")
  counter = [0]
  model = io.BytesIO()
  spm.set_random_generator_seed(seed)
  start = time.time()
  spm.SentencePieceTrainer.train(
      sentence_iterator=_lines(texts, counter), model_writer=model,
      vocab_size=vocab_size, model_type=model_type, character_coverage=character_coverage,
      pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=BOS_ID,
      control_symbols=list(CONTROL_SYMBOLS), byte_fallback=True,
      input_sentence_size=0, shuffle_input_sentence=False, num_threads=num_threads,
      max_sentence_length=1 << 16, minloglevel=1)
  data = model.getvalue()
  atomic_write_bytes(output_path, data)
  meta = dict(metadata or {})
  meta.update(backend="sentencepiece", model_file=os.path.basename(output_path),
              sha256=hashlib.sha256(data).hexdigest(), vocab_size=vocab_size,
              model_type=model_type, seed=seed, num_threads=num_threads,
              character_coverage=character_coverage, byte_fallback=True,
              n_sentences=counter[0], train_seconds=round(time.time() - start, 1),
              sentencepiece_version=spm.__version__)
  atomic_write_bytes(sidecar_path(output_path), json.dumps(meta, indent=2).encode())
  return output_path


def token_stats(vocab: SentencePieceVocab, texts: list[str]) -> dict[str, float]:
  """Tokens per document (without eos): what decides seq_len and packing density."""
  counts = np.array([len(ids) for ids in vocab.encode_batch(texts)])
  chars = sum(len(t) for t in texts)
  return {"docs": len(texts), "tokens": int(counts.sum()), "mean": round(float(counts.mean()), 1),
          "median": float(np.median(counts)), "p90": float(np.percentile(counts, 90)),
          "p99": float(np.percentile(counts, 99)), "max": int(counts.max()),
          "chars_per_token": round(chars / max(int(counts.sum()), 1), 2)}


def train_from_dataset(dataset: str, data_dir: str, output: str, *, vocab_size: int = 8000,
                       text_field: str = "text", split: str = "train", max_docs: int = 200_000,
                       model_type: str = "unigram", seed: int = 0, num_threads: int = 2,
                       fit_corpus: bool = False,
                       text_flag: str = "--config.data.text_field") -> str:
  """Train on (a seeded sample of) a dataset split; records provenance and token stats.

  `fit_corpus`: a corpus too small for `vocab_size` pieces gets the most it supports (what
  SentencePiece names) instead of an error.
  """
  from common.data.records import get_text  # pylint: disable=g-import-not-at-top
  from common.data.sources import open_source  # pylint: disable=g-import-not-at-top

  source = open_source(dataset, split, data_dir)
  n = len(source)
  # A seeded subset (kept in source order) bounds training time on big corpora.
  indices = (range(n) if n <= max_docs else
             np.sort(np.random.default_rng(seed).choice(n, max_docs, replace=False)))
  texts = [get_text(ex, text_field, flag=text_flag) for start in range(0, len(indices), 4096)
           for ex in source.__getitems__([int(i) for i in indices[start:start + 4096]])]
  if not texts:
    raise ValueError(f"{dataset}:{split} has no documents to train a tokenizer on")
  start = time.time()
  train = lambda size: train_sentencepiece(
      texts, output, size, model_type=model_type, seed=seed, num_threads=num_threads,
      metadata={"dataset": dataset, "data_dir": data_dir, "split": split,
                "text_field": text_field, "n_docs": len(texts), "source_docs": n})
  try:
    path = train(vocab_size)
  except RuntimeError as e:  # "Vocabulary size too high (8000). Please set it to a value <= N"
    most = re.search(r"value <= (\d+)", str(e))
    if not most:
      raise ValueError(f"SentencePiece could not train on {dataset}:{split}: {e}") from None
    if not fit_corpus:
      raise ValueError(f"{dataset}:{split} supports at most {most.group(1)} pieces; pass "
                       f"--vocab_size={most.group(1)} or less") from None
    path = train(int(most.group(1)))
  seconds = time.time() - start
  stats = token_stats(SentencePieceVocab(path), texts)
  with open(sidecar_path(path)) as fh:
    meta = json.load(fh)
  meta["token_stats"] = stats
  atomic_write_bytes(sidecar_path(path), json.dumps(meta, indent=2).encode())
  print(f"wrote {path} (+ {sidecar_path(path)}) in {seconds:.1f}s from {len(texts)} of {n} "
        f"{dataset}:{split} documents ({meta['n_sentences']} lines)")
  print("tokens per document:", json.dumps(stats))
  return path


def main() -> None:
  f = flags.FLAGS
  for name in ("dataset", "output"):
    if not f[name].value:
      raise ValueError(f"--{name} is required")
  if not f.output.endswith(".model"):
    raise ValueError(f"--output={f.output!r} must end with .model")
  train_from_dataset(f.dataset, f.data_dir, f.output, vocab_size=f.vocab_size,
                     text_field=f.text_field, split=f.split, max_docs=f.max_docs,
                     model_type=f.model_type, seed=f.seed, num_threads=f.num_threads,
                     text_flag="--text_field")


def define_flags() -> None:
  flags.DEFINE_string("dataset", None, "dataset spec (see common.data.sources)")
  flags.DEFINE_string("data_dir", DEFAULT_DATA_DIR,
                      "where prepared datasets live (debian, sentiment, tfds: specs)")
  flags.DEFINE_string("output", None, "output model path, ending in .model")
  flags.DEFINE_integer("vocab_size", 8000, "pieces in the model (sentinels are added later)")
  flags.DEFINE_integer("max_docs", 200_000, "train on a seeded sample of at most this many docs")
  flags.DEFINE_string("text_field", "text", "example field holding the text")
  flags.DEFINE_string("split", "train", "split to train on (never validation/test)")
  flags.DEFINE_enum("model_type", "unigram", ["unigram", "bpe"], "SentencePiece algorithm")
  flags.DEFINE_integer("seed", 0, "seed for sampling documents and for SentencePiece")
  flags.DEFINE_integer("num_threads", 2, "trainer threads (part of what makes output identical)")


def cli_main() -> None:
  cli.run(main, define_flags)


if __name__ == "__main__":
  cli_main()
