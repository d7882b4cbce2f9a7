"""Labelled text for classification and regression, for any model family.

Sources: every dataset spec of `common.data.sources` (jsonl:, tfds:, sentiment, ...) plus
`csv:PATH_OR_GLOB` (a header row names the fields; `{split}` selects files per split as for
jsonl). Field names come from the caller's config; labels map to class indices through an
explicit label set (or one read from the training split). Single texts become
`[CLS] A [SEP]`, pairs `[CLS] A [SEP] B [SEP]` with segment (type) ids 0/1, truncated
longest-first to the sequence length.
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import io
import math
import os
from typing import Any, Sequence

import numpy as np

from common.data.lanes import Identity, LaneIterator, owned_lanes
from common.data.rows import OnePerRow
from common.data.records import get_text, Source
from common.data.sources import SPLIT_PLACEHOLDER, open_source, slice_split
from common.vocab import Vocabulary

FEATURES = ("tokens", "type_ids", "positions", "segment_ids", "labels", "weights")


class CsvSource:
  """Rows of CSV files (header row = field names), read into memory once."""

  def __init__(self, rows: list[dict[str, str]]):
    self._rows = rows

  def __len__(self) -> int:
    return len(self._rows)

  def __getitem__(self, index: int) -> dict[str, str]:
    return self._rows[index]

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, str]]:
    return [self._rows[i] for i in indices]


def _open_csv(pattern: str, split: str) -> CsvSource:
  path_glob = pattern.replace(SPLIT_PLACEHOLDER, split)
  files = sorted(glob.glob(os.path.expanduser(path_glob)))
  if not files:
    raise FileNotFoundError(f"no files match csv:{pattern} (split {split!r})")
  rows: list[dict[str, str]] = []
  for path in files:
    with open(path, newline="", encoding="utf-8") as f:
      reader = csv.DictReader(io.StringIO(f.read()))
      for lineno, row in enumerate(reader, 2):
        if None in row or any(v is None for v in row.values()):
          raise ValueError(f"{path}:{lineno}: expected {len(reader.fieldnames)} columns "
                           f"({', '.join(reader.fieldnames)})")
        rows.append(row)
  return CsvSource(rows)


def open_examples(spec: str, split: str, data_dir: str) -> Source:
  """Source of labelled examples for a split; an empty split is an error."""
  if spec.startswith("csv:"):
    source: Source = slice_split(lambda name: _open_csv(spec[len("csv:"):], name), split)
  else:
    source = open_source(spec, split, data_dir)
  if len(source) == 0:
    raise ValueError(f"dataset {spec!r} split {split!r} has no examples")
  return source


@dataclasses.dataclass(frozen=True)
class Fields:
  """Which example fields hold the text(s) and the label (config: text_field, ...)."""
  text: str
  label: str
  text_pair: str = ""

  def check(self, example: dict[str, Any], where: str) -> None:
    """One clear error for a field the data does not have."""
    roles = (("text_field", self.text), ("text_pair_field", self.text_pair),
             ("label_field", self.label))
    for role, name in roles:
      if name and name not in example:
        raise ValueError(f"{where}: examples have no field {name!r} ({role}); fields present: "
                         f"{sorted(example)}")


def label_key(value: Any) -> str:
  """Labels compare as text, so 1 (JSON), '1' (CSV) and np.int64(1) (TFDS) are one label."""
  if isinstance(value, bytes):
    value = value.decode("utf-8")
  if isinstance(value, np.generic):
    value = value.item()
  return str(value)


class LabelMap:
  """Label values -> class indices 0..n-1, in the given order."""

  def __init__(self, names: Sequence[Any]):
    self.names = tuple(label_key(n) for n in names)
    if len(self.names) < 2:
      raise ValueError(f"a classification task needs at least 2 labels, got {list(self.names)}")
    if len(set(self.names)) != len(self.names):
      raise ValueError(f"duplicate labels in {list(self.names)}")
    self._index = {n: i for i, n in enumerate(self.names)}

  @classmethod
  def parse(cls, spec: str) -> "LabelMap":
    """From a comma-separated list, e.g. 'negative,positive' or '0,1'."""
    return cls([s.strip() for s in spec.split(",") if s.strip()])

  @classmethod
  def infer(cls, values: Sequence[Any]) -> "LabelMap":
    """Sorted distinct values (numerically when all are integers)."""
    keys = {label_key(v) for v in values}
    try:
      return cls(sorted(keys, key=int))
    except ValueError:
      return cls(sorted(keys))

  def __len__(self) -> int:
    return len(self.names)

  def index(self, value: Any, where: str = "") -> int:
    key = label_key(value)
    if key not in self._index:
      hint = (" (GLUE test splits are unlabelled: evaluate on validation instead)"
              if key == "-1" else "")
      raise ValueError(f"{where}label {key!r} is not in the label set {list(self.names)}"
                       f"{hint}")
    return self._index[key]


def read_column(source: Source, field: str, where: str) -> list[Any]:
  """One field of every example (batched reads); a missing field is a clear error."""
  values = []
  for start in range(0, len(source), 1024):
    indices = list(range(start, min(start + 1024, len(source))))
    try:
      examples = source.__getitems__(indices)
    except TypeError:  # tfds.testing.mock_data's sources read one example at a time
      examples = [source[i] for i in indices]
    for i, ex in enumerate(examples):
      if field not in ex:
        raise ValueError(f"{where} example {start + i} has no field {field!r}; fields present: "
                         f"{sorted(ex)}")
      values.append(ex[field])
  return values


def check_labels(values: Sequence[Any], labels: LabelMap | None, where: str) -> None:
  """Every label is in the set (classification) or a finite number (regression)."""
  for i, v in enumerate(values):
    if labels is not None:
      labels.index(v, f"{where} example {i}: ")
    else:
      try:
        ok = math.isfinite(float(v))
      except (TypeError, ValueError):
        ok = False
      if not ok:
        raise ValueError(f"{where} example {i}: regression target {v!r} is not a finite number")


def format_pair(ids_a: Sequence[int], ids_b: Sequence[int] | None, *, max_len: int,
                cls_id: int, sep_id: int) -> tuple[np.ndarray, np.ndarray]:
  """`[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]` and type ids (0 for A, 1 for B), removing
  tokens from the end of the longer text until it fits in `max_len`."""
  a, b = list(ids_a), list(ids_b) if ids_b is not None else None
  budget = max_len - (3 if b is not None else 2)
  if budget < 2:
    raise ValueError(f"sequence length {max_len} leaves no room for text")
  while len(a) + len(b or []) > budget:
    if b is not None and len(b) > len(a):
      b.pop()
    else:
      a.pop()
  tokens = [cls_id] + a + [sep_id]
  types = [0] * len(tokens)
  if b is not None:
    tokens += b + [sep_id]
    types += [1] * (len(b) + 1)
  return np.asarray(tokens, np.int32), np.asarray(types, np.int32)


def classification_dataset(source: Source, vocab: Vocabulary, *, fields: Fields,
                           labels: LabelMap | None, seq_len: int, batch_size: int, seed: int,
                           train: bool, num_epochs: int | None = None, dataset_name: str = "",
                           lanes: range | None = None) -> LaneIterator:
  """This process's rows of each global batch: tokens/type_ids/positions/segment_ids [b, L]
  (segment id 1 = real token, 0 = padding), labels [b, 1] (class index, or float when
  `labels` is None: regression) and weights [b, 1] (rank 2, as the trainer shards every
  feature [batch, ...]).

  train: shuffled each epoch, repeated `num_epochs` (None = forever). Otherwise one pass in
  order: batch k row r is example k * batch_size + r, padding rows (weight 0) after the last,
  `num_batches` batches whatever the number of processes.
  """
  if len(source) < batch_size and train:
    raise ValueError(f"the training split has {len(source)} examples, fewer than one batch of "
                     f"{batch_size}")
  lanes = owned_lanes(batch_size) if lanes is None else lanes
  regression = labels is None

  def encode(example: dict[str, Any], key: tuple[int, int]) -> dict[str, np.ndarray]:
    del key
    a = vocab.encode(get_text(example, fields.text))
    b = vocab.encode(get_text(example, fields.text_pair)) if fields.text_pair else None
    tokens, types = format_pair(a, b, max_len=seq_len, cls_id=vocab.cls_id, sep_id=vocab.sep_id)
    raw = example[fields.label]
    label = np.asarray([raw if regression else labels.index(raw)],
                       np.float32 if regression else np.int32)
    return {"tokens": tokens, "type_ids": types, "labels": label,
            "weights": np.ones(1, np.float32)}

  def finalize(rows: dict[str, np.ndarray], row_ids: np.ndarray) -> dict[str, np.ndarray]:
    del row_ids
    return {"tokens": rows["tokens"], "type_ids": rows["type_ids"],
            "positions": rows["tokens_positions"], "segment_ids": rows["tokens_segment_ids"],
            "labels": rows["labels"], "weights": rows["weights"]}

  builder = OnePerRow({"tokens": seq_len, "type_ids": seq_len, "labels": 1, "weights": 1},
                      dtypes={"labels": np.float32 if regression else np.int32})
  identity = Identity(dataset_name or type(source).__name__, len(source), batch_size, seed,
                      train)
  return LaneIterator(source, encode, builder, finalize, identity=identity,
                      num_epochs=num_epochs if train else 1, lanes=lanes,
                      max_steps=None if train else num_batches(len(source), batch_size))


def num_batches(n_examples: int, batch_size: int) -> int:
  """Batches of one evaluation pass (`train=False`) over `n_examples`."""
  return -(-n_examples // batch_size)
