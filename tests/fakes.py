"""Deterministic synthetic data for tests: batches shaped like the LM pipeline's, and small
made-up JSONL corpora with a SentencePiece model trained on them (no real text in the repo)."""

from __future__ import annotations

import json
import os
import random
from typing import Iterable

import jax
import numpy as np

SYLLABLES = ("ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "de", "gu", "fa", "zo", "bi", "xe")


def made_up_words(rng: random.Random, n: int, max_syllables: int = 4) -> list[str]:
  return ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, max_syllables)))
          for _ in range(n)]


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
  with open(path, "w") as f:
    for row in rows:
      f.write(json.dumps(row) + "\n")


def write_corpus(root: str | os.PathLike, splits: dict[str, list[dict]], text_field: str = "body",
                 vocab_size: int = 400) -> str:
  """ROOT/{split}.jsonl for each split, and a SentencePiece model (path returned) trained on
  the train split's `text_field`."""
  from common.tokenizer import train_sentencepiece  # pylint: disable=g-import-not-at-top
  for split, rows in splits.items():
    write_jsonl(os.path.join(root, f"{split}.jsonl"), rows)
  return train_sentencepiece([r[text_field] for r in splits["train"]],
                             os.path.join(root, "sp.model"), vocab_size=vocab_size)


def word_corpus(root: str | os.PathLike, sizes: Iterable[tuple[str, int]]) -> str:
  """Bodies of 5-40 made-up words per split (seed 0); returns the tokenizer's path."""
  rng = random.Random(0)
  words = made_up_words(rng, 300)
  return write_corpus(root, {split: [{"body": " ".join(rng.choice(words)
                                                        for _ in range(rng.randint(5, 40)))}
                                     for _ in range(n)] for split, n in sizes})


class SyntheticLM:
  """Packed rows with two documents each; a grain-like iterator with get/set_state.

  Each process yields its own rows of the same global batch (rows split by process index),
  so multi-process runs see exactly what a single process sees.
  """

  def __init__(self, batch: int = 8, seq_len: int = 32, vocab: int = 512, seed: int = 0):
    self.batch, self.seq_len, self.vocab, self.seed, self.i = batch, seq_len, vocab, seed, 0

  def global_batch(self, i: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, i])
    b, length = self.batch, self.seq_len
    # A learnable pattern: a fixed bigram chain (next = 5 * prev + 1 mod vocab) from random starts.
    targets = np.zeros((b, length), np.int32)
    targets[:, 0] = rng.integers(4, self.vocab, b)
    for i in range(1, length):
      targets[:, i] = (5 * targets[:, i - 1] + 1) % self.vocab
    cut = length // 2 + 3
    segment_ids = np.where(np.arange(length) < cut, 1, 2)[None].repeat(b, 0).astype(np.int32)
    segment_ids[0, -4:] = 0  # some padding
    positions = np.where(np.arange(length) < cut, np.arange(length), np.arange(length) - cut)
    positions = positions[None].repeat(b, 0).astype(np.int32)
    inputs = np.roll(targets, 1, axis=1)
    inputs[positions == 0] = 3
    targets[segment_ids == 0] = 0
    inputs[segment_ids == 0] = 0
    return {"inputs": inputs, "targets": targets, "segment_ids": segment_ids,
            "positions": positions, "weights": (segment_ids > 0).astype(np.float32)}

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    full = self.global_batch(self.i)
    self.i += 1
    n, p = jax.process_count(), jax.process_index()
    rows = self.batch // n
    return {k: v[p * rows:(p + 1) * rows] for k, v in full.items()}

  def get_state(self) -> dict:  # the data position: the same on every process
    return {"i": self.i}

  def set_state(self, state: dict) -> None:
    self.i = state["i"]


def step_losses(cfg, partitioner, num_steps: int = 3):
  """(setup, state, losses) after `num_steps` jitted train steps of the tiny GPT on
  SyntheticLM."""
  from common import steps, train_state  # pylint: disable=g-import-not-at-top
  from gpt_flax.model import GPTModel  # pylint: disable=g-import-not-at-top
  setup = train_state.make_setup(GPTModel(cfg), cfg, partitioner)
  state = train_state.init_state(setup)
  step = steps.make_train_step(setup)
  data = SyntheticLM(cfg.train.batch_size, cfg.data.seq_len, cfg.model.vocab_size)
  losses = []
  for _ in range(num_steps):
    state, metrics = step(state, partitioner.global_batch(next(data)))
    losses.append(float(metrics["loss"]))
  return setup, state, losses
