"""Dataset spec string -> random-access source of dicts (`common.data.records.Source`).

Specs:
 debian                 our DebianDescriptions TFDS dataset in data_dir (common.data.prepare)
 sentiment              rated movie-review sentences (common.data.sentiment): text, label, rating
 tfds:NAME[/CONFIG]     a TFDS catalog dataset in data_dir, prepared in ArrayRecord format
 jsonl:PATH_OR_GLOB     one JSON object per non-empty line
 text:PATH_OR_GLOB      one document per non-empty line, as {"text": line}

For jsonl/text, a literal `{split}` in the path selects files per split (`data/{split}.jsonl`);
without it every split reads the same files, so split hygiene is then the caller's job.

Every spec takes TFDS's slice syntax on a split to carve one from another, by position:
`train[:90%]` and `train[90%:]` (a validation set for data that has none), `train[:1000]`,
`validation[-10%:]`. Percentages round to the nearest example, as TFDS's default does.
File sources are read into memory once (fine for the small corpora they are meant for) and
every line is checked then (`skip_bad_records` drops and counts bad ones instead).
"""
from __future__ import annotations

import glob
import os
import re
from typing import Callable, Sequence

from common.data.records import DecodedSource, LineSource, SliceSource, Source

SPLIT_PLACEHOLDER = "{split}"
_SLICE = re.compile(r"^([^\[\]]+)\[(-?\d+%?)?:(-?\d+%?)?\]$")


def parse_split(split: str) -> tuple[str, str | None, str | None]:
  """'train[:90%]' -> ('train', None, '90%'); 'train' -> ('train', None, None)."""
  if "[" not in split:
    return split, None, None
  m = _SLICE.match(split)
  if not m or (m.group(2) is None and m.group(3) is None):
    raise ValueError(f"split {split!r}: expected NAME or NAME[START:STOP] with START/STOP "
                     "integers or percentages, e.g. train[:90%] or train[90%:]")
  return m.group(1), m.group(2), m.group(3)


def _bound(value: str | None, n: int, default: int) -> int:
  if value is None:
    return default
  k = round(int(value[:-1]) * n / 100) if value.endswith("%") else int(value)
  return min(max(k + n if k < 0 else k, 0), n)


def split_range(split: str, n: int) -> tuple[int, int]:
  """The [start, stop) positions a split's slice covers in a split of n examples."""
  _, start, stop = parse_split(split)
  return _bound(start, n, 0), _bound(stop, n, n)


def slice_split(open_whole: Callable[[str], Source], split: str) -> Source:
  """`split` of a source family that cannot slice itself: open the named split whole, then
  keep the slice's examples; an empty slice is an error."""
  name, start, stop = parse_split(split)
  whole = open_whole(name)
  if start is None and stop is None:
    return whole
  lo, hi = split_range(split, len(whole))
  if hi <= lo:
    raise ValueError(f"split {split!r} selects no examples of the {len(whole)} in {name!r}")
  return SliceSource(whole, lo, hi)


def _check_split(split: str, valid: Sequence[str], what: str) -> None:
  # TFDS also accepts slices such as 'train[:10%]'; validate the split name before the '['.
  if split.split("[")[0] not in valid:
    raise ValueError(f"unknown split {split!r} for {what}; valid splits: {sorted(valid)}")


def _open_files(kind: str, pattern: str, split: str, skip_bad_records: bool) -> LineSource:
  if SPLIT_PLACEHOLDER in pattern:
    files = sorted(glob.glob(pattern.replace(SPLIT_PLACEHOLDER, split)))
    if not files:
      any_split = re.escape(pattern).replace(re.escape(SPLIT_PLACEHOLDER), "(.+?)")
      # Glob wildcards in the pattern become regex wildcards to recover split names.
      any_split = any_split.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
      found = sorted(glob.glob(pattern.replace(SPLIT_PLACEHOLDER, "*")))
      valid = sorted({m.group(1) for f in found if (m := re.fullmatch(any_split, f))})
      if valid:
        raise ValueError(f"unknown split {split!r} for {kind}:{pattern}; valid splits: "
                f"{valid}")
  else:
    files = sorted(glob.glob(pattern))
  if not files:
    raise FileNotFoundError(f"no files match {kind}:{pattern} (split {split!r})")
  lines, locations = [], []
  for path in files:
    with open(path, "rb") as f:
      for lineno, line in enumerate(f, 1):
        line = line.rstrip(b"\r\n")
        if line.strip():
          lines.append(line)
          locations.append((path, lineno))
  if not lines:
    raise ValueError(f"{kind}:{pattern} (split {split!r}) matched {files} but they hold no "
            "non-empty lines")
  source = LineSource(lines, locations, kind, skip_bad_records=skip_bad_records)
  if not len(source):
    raise ValueError(f"{kind}:{pattern} (split {split!r}) has no readable lines")
  return source


def _import_legacy_tfds_builders() -> None:
  """Some catalog builders (cnn_dailymail, ...) register only when their category is imported."""
  # pylint: disable=g-import-not-at-top,unused-import
  import tensorflow_datasets.question_answering  # noqa: F401
  import tensorflow_datasets.summarization  # noqa: F401
  import tensorflow_datasets.text  # noqa: F401
  import tensorflow_datasets.translate  # noqa: F401


def _open_tfds(name: str, split: str, data_dir: str, spec: str, prepare_hint: str) -> DecodedSource:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  _import_legacy_tfds_builders()
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f"unknown TFDS dataset {name!r} in spec {spec!r}; see "
            "https://www.tensorflow.org/datasets/catalog") from None
  if builder.is_prepared():
    _check_split(split, list(builder.info.splits), spec)
  try:
    # Asked even when not prepared: tfds.testing.mock_data serves data without preparing.
    data = builder.as_data_source(split)
  except Exception as e:
    if builder.is_prepared():
      raise
    raise FileNotFoundError(f"dataset {spec!r} is not prepared in {data_dir}; {prepare_hint}"
                ) from e
  return DecodedSource(data, f"{spec}:{split}")


def open_source(dataset: str, split: str, data_dir: str, *, skip_bad_records: bool = False
                ) -> Source:
  """Open `split` of the dataset named by spec `dataset` (see module docstring)."""
  if dataset == "debian":
    from common.data import debian  # pylint: disable=g-import-not-at-top

    builder = debian.debian_builder(data_dir)
    if not builder.is_prepared():
      raise FileNotFoundError(
        f"dataset 'debian' is not prepared in {data_dir}; run: "
        f"python -m common.data.prepare --dataset=debian --data_dir={data_dir}")
    _check_split(split, list(builder.info.splits), "debian")
    return DecodedSource(builder.as_data_source(split), f"debian:{split}")
  parse_split(split)  # a malformed slice is an error before anything is read
  if dataset == "sentiment":
    from common.data import sentiment  # pylint: disable=g-import-not-at-top

    return slice_split(lambda name: sentiment.open_sentiment(name, data_dir), split)
  if dataset.startswith("tfds:"):
    name = dataset[len("tfds:"):]
    hint = (f"prepare it in ArrayRecord format: tfds.builder({name!r}, data_dir={data_dir!r}, "
        "file_format='array_record').download_and_prepare()")
    return _open_tfds(name, split, data_dir, dataset, hint)
  for kind in ("jsonl", "text"):
    if dataset.startswith(kind + ":"):
      pattern = os.path.expanduser(dataset[len(kind) + 1:])
      return slice_split(lambda name: _open_files(kind, pattern, name, skip_bad_records), split)
  raise ValueError(f"unknown dataset spec {dataset!r}; valid forms: debian, sentiment, "
          "tfds:NAME[/CONFIG], jsonl:PATH_OR_GLOB, text:PATH_OR_GLOB")
