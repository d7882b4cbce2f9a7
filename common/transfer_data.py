"""The transfer grid's data files: OUT/data holds the evaluation splits once and each
(seed, budget) subset of the labelled training split as {role}.jsonl, which a cell's
fine-tuning reads through `cell_data`."""

from __future__ import annotations

import json
import os
from typing import Any, Callable

import numpy as np
from ml_collections import ConfigDict

# (config, role: "train" | "validation" | "test") -> that split's labelled examples.
Examples = Callable[[ConfigDict, str], list[dict[str, Any]]]


def cell_data(data_dir: str) -> dict[str, str]:
  """A config section's dataset spec and split names for the files in `data_dir`."""
  return {"dataset": f"jsonl:{data_dir}/{{split}}.jsonl", "train_split": "train",
          "eval_split": "validation", "test_split": "test"}


def jsonable(value: Any) -> Any:
  """A field of a TFDS / JSONL example as JSON (text comes back from TFDS as bytes)."""
  if isinstance(value, bytes):
    return value.decode("utf-8")
  return value.item() if isinstance(value, np.generic) else value


def write_jsonl(path: str, rows: list[dict[str, Any]], repeat: int = 1) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    for _ in range(repeat):
      for row in rows:
        f.write(json.dumps(row) + "\n")
  os.replace(tmp, path)


class LabelledData:
  """OUT/data: the full evaluation splits once, and per (seed, budget) the seeded subset of
  the labelled training split, as the JSONL files cells fine-tune on."""

  def __init__(self, examples: Examples, cfg: ConfigDict, out: str):
    self.dir = os.path.join(out, "data")
    os.makedirs(self.dir, exist_ok=True)
    self.rows = examples(cfg, "train")
    for role in ("validation", "test"):
      path = os.path.join(self.dir, f"{role}.jsonl")
      if not os.path.exists(path):
        write_jsonl(path, examples(cfg, role))

  def subset(self, seed: int, n: int) -> list[dict[str, Any]]:
    """The first n of the seed's order: nested across budgets."""
    order = np.random.default_rng([seed, 2024]).permutation(len(self.rows))
    return [self.rows[i] for i in order[:n]]

  def write(self, seed: int, n: int, repeat: int) -> str:
    path = os.path.join(self.dir, f"n{n}_s{seed}")
    os.makedirs(path, exist_ok=True)
    write_jsonl(os.path.join(path, "train.jsonl"), self.subset(seed, n), repeat)
    for role in ("validation", "test"):
      link = os.path.join(path, f"{role}.jsonl")
      if not os.path.lexists(link):
        os.symlink(os.path.join("..", f"{role}.jsonl"), link)
    return path
