"""Dataset spec string -> random-access source of dicts (what `grain.MapDataset.source` takes).

Specs:
  debian                 our DebianDescriptions TFDS dataset in data_dir (common.data.prepare)
  sentiment              rated movie-review sentences (common.data.sentiment): text, label, rating
  tfds:NAME[/CONFIG]     a TFDS catalog dataset in data_dir, prepared in ArrayRecord format
  jsonl:PATH_OR_GLOB     one JSON object per non-empty line
  text:PATH_OR_GLOB      one document per non-empty line, as {"text": line}

For jsonl/text, a literal `{split}` in the path selects files per split (`data/{split}.jsonl`);
without it every split reads the same files, so split hygiene is then the caller's job.
File sources are read into memory once (fine for the small corpora they are meant for).
"""
from __future__ import annotations

import glob
import json
import os
import re
from typing import Any, Protocol, Sequence

SPLIT_PLACEHOLDER = "{split}"


class Source(Protocol):
    """grain's RandomAccessDataSource (`len` + integer indexing), plus batched reads."""

    def __len__(self) -> int: ...
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]: ...


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    return value


class DecodedSource:
    """Wraps a TFDS data source so text features come back as str instead of bytes."""

    def __init__(self, source: Sequence[dict[str, Any]], name: str):
        self._source = source
        self._name = name

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return _decode(self._source[index])

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Many examples at once: ~4x faster than one by one for TFDS ArrayRecord sources."""
        return [_decode(x) for x in self._source.__getitems__(list(indices))]

    def __repr__(self) -> str:
        return f"DecodedSource({self._name}, len={len(self)})"


class LineSource:
    """Non-empty lines of some files, parsed lazily into dicts (jsonl or plain text)."""

    def __init__(self, lines: list[bytes], locations: list[tuple[str, int]], kind: str):
        self._lines = lines
        self._locations = locations  # (file, line number) for error messages
        self._kind = kind

    def __len__(self) -> int:
        return len(self._lines)

    def __getitem__(self, index: int) -> dict[str, Any]:
        line = self._lines[index].decode("utf-8")
        if self._kind == "text":
            return {"text": line}
        try:
            example = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError("%s:%d: invalid JSON (%s)" % (*self._locations[index], e)) from None
        if not isinstance(example, dict):
            raise ValueError("%s:%d: expected a JSON object, got %s"
                             % (*self._locations[index], type(example).__name__))
        return example

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        return [self[i] for i in indices]


def get_text(example: dict[str, Any], field: str) -> str:
    """example[field] as str, or a clear error naming the field and the ones present."""
    if field not in example:
        raise ValueError(f"example has no field {field!r}; fields present: {sorted(example)}; "
                       "pick one with --text_field")
    value = example[field]
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if not isinstance(value, str):
        raise ValueError(f"field {field!r} holds {type(value).__name__}, not text; fields present: "
                        f"{sorted(example)}")
    return value


def _check_split(split: str, valid: Sequence[str], what: str) -> None:
    # TFDS also accepts slices such as 'train[:10%]'; validate the split name before the '['.
    if split.split("[")[0] not in valid:
        raise ValueError(f"unknown split {split!r} for {what}; valid splits: {sorted(valid)}")


def _open_files(kind: str, pattern: str, split: str) -> LineSource:
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
    return LineSource(lines, locations, kind)


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


def open_source(dataset: str, split: str, data_dir: str) -> Source:
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
    if dataset == "sentiment":
        from common.data import sentiment  # pylint: disable=g-import-not-at-top

        return sentiment.open_sentiment(split, data_dir)
    if dataset.startswith("tfds:"):
        name = dataset[len("tfds:"):]
        hint = (f"prepare it in ArrayRecord format: tfds.builder({name!r}, data_dir={data_dir!r}, "
                "file_format='array_record').download_and_prepare()")
        return _open_tfds(name, split, data_dir, dataset, hint)
    for kind in ("jsonl", "text"):
        if dataset.startswith(kind + ":"):
            return _open_files(kind, os.path.expanduser(dataset[len(kind) + 1:]), split)
    raise ValueError(f"unknown dataset spec {dataset!r}; valid forms: debian, sentiment, "
                     "tfds:NAME[/CONFIG], jsonl:PATH_OR_GLOB, text:PATH_OR_GLOB")
