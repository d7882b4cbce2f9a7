"""Movie-review sentiment: built from a small generated sdist in the vaderSentiment layout (never
downloads); polarity threshold, duplicates, stable splits, provenance, `sentiment` spec."""
import hashlib
import io
import json
import os
import random
import tarfile

import pytest

from common.data import sentiment, sources


def _tar_bytes(members: dict[str, bytes]) -> bytes:
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w:gz") as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  return buf.getvalue()


def write_fake_sdist(directory, n: int = 300, seed: int = 0) -> tuple[str, bytes, list]:
  """A vaderSentiment-3.3.2.tar.gz holding the nested archive and a GroundTruth file
  (tab-separated id, mean rating, sentence; CRLF line ends, as the real one)."""
  rng = random.Random(seed)
  words = "the film plot acting is was a very not quite dull moving smart flat".split()
  rows = []
  for i in range(1, n + 1):
    rating = round(rng.uniform(-4, 4), 6)
    rows.append((i, rating, " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
                 + f" {i}."))
  rows.append((n + 1, 2.5, rows[0][2]))  # a duplicate sentence: kept once
  rows.append((n + 2, 0.49, "neither here nor there."))  # neutral: dropped
  text = "".join(f"{i}\t{r}\t{s}\r\n" for i, r, s in rows).encode()
  inner = _tar_bytes({"hutto_ICWSM_2014/" + sentiment.DATA_FILE: text,
                      "hutto_ICWSM_2014/_README_.txt": b"readme"})
  outer = _tar_bytes({"vaderSentiment-3.3.2/" + sentiment.SDIST_ARCHIVE: inner,
                      "vaderSentiment-3.3.2/setup.py": b""})
  path = os.path.join(directory, "vaderSentiment-3.3.2.tar.gz")
  with open(path, "wb") as f:
    f.write(outer)
  return path, text, rows


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("sentiment")
  sdist, text, rows = write_fake_sdist(str(root))
  data_dir = str(root / "data")
  builder = sentiment.prepare_sentiment(data_dir, sdist=sdist)
  return builder, data_dir, sdist, text, rows


def test_splits_labels_and_fields(built):
  builder, data_dir, _, _, rows = built
  polar = {s: r for _, r, s in rows[:-2] if abs(r) >= 0.5}  # the duplicate keeps the first
  got = {}
  for split in ("train", "validation", "test"):
    src = sources.open_source("sentiment", split, data_dir)
    for i in range(len(src)):
      ex = src[i]
      assert type(ex["text"]) is str and type(ex["label"]) is int
      assert type(ex["rating"]) is float
      assert sentiment.split_for(ex["text"]) == split
      got[ex["text"]] = ex
  assert set(got) == set(polar)
  for text, ex in got.items():
    assert ex["label"] == int(polar[text] > 0) and abs(ex["rating"] - polar[text]) < 1e-5
  sizes = {s: i.num_examples for s, i in builder.info.splits.items()}
  assert sizes["train"] > 4 * sizes["validation"] > 0 and sizes["test"] > 0
  assert builder.info.features["label"].names == ["negative", "positive"]


def test_provenance_is_recorded(built):
  builder, data_dir, sdist, text, _ = built
  with open(os.path.join(builder.data_dir, sentiment.PROVENANCE)) as f:
    prov = json.load(f)
  assert (prov["package"], prov["version"]) == ("vadersentiment", "3.3.2")
  assert prov["file_sha256"] == hashlib.sha256(text).hexdigest()
  assert prov["sdist_sha256"] == hashlib.sha256(open(sdist, "rb").read()).hexdigest()
  assert "Hutto" in prov["citation"]
  # Prepared once: a second call neither fetches nor rebuilds.
  assert sentiment.prepare_sentiment(data_dir, sdist="/nonexistent").is_prepared()


def test_not_prepared_and_bad_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="python -m common.data.prepare "
                                              "--dataset=sentiment"):
    sources.open_source("sentiment", "train", str(tmp_path))
  bad = tmp_path / "bad.txt"
  bad.write_text("1\t2.0\n")
  with pytest.raises(ValueError, match=r"bad.txt:1: expected 'id<TAB>rating<TAB>sentence'"):
    sentiment.read_ground_truth(str(bad))
  (tmp_path / "empty.tar.gz").write_bytes(_tar_bytes({"x/setup.py": b""}))
  with pytest.raises(ValueError, match="hutto_ICWSM_2014.tar.gz"):
    sentiment.fetch_sentiment(str(tmp_path / "raw"), sdist=str(tmp_path / "empty.tar.gz"))
  assert not os.path.exists(tmp_path / "raw")  # nothing half-written
