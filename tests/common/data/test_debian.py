"""Debian descriptions: parsing, split hygiene, dedupe, provenance, TFDS build read without TF.

Uses small generated apt lists in the real Translation-en / Packages format; never runs apt-get.
"""
import json
import os
import random
import shutil

import pytest

from common.data import debian, sources

_WORDS = ("fast small tool library for parsing data files network graphics daemon with support "
          "of plugins and the a to utility reads writes many formats").split()


def _sentence(rng: random.Random) -> str:
  return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 14))).capitalize() + "."


def _wrapped(text: str, width: int = 60) -> list[str]:
  """Description lines: wrapped at `width`, each with the one leading space apt uses."""
  lines, line = [], ""
  for word in text.split():
    if line and len(line) + 1 + len(word) > width:
      lines.append(" " + line)
      line = word
    else:
      line = f"{line} {word}".strip()
  return lines + [" " + line]


def write_fake_lists(directory: str, n_sources: int = 120, seed: int = 0) -> dict:
  """Translation-en + Packages files; returns what the builder should make of them."""
  rng = random.Random(seed)
  translation, packages, expected = [], [], {}
  shared_body = _sentence(rng) + " " + _sentence(rng)
  for s in range(n_sources):
    source = f"src{s:03d}"
    body = f"{source} is a {_sentence(rng)} {_sentence(rng)}"
    for binary in (source, f"lib{source}-dev"):
      text = body if binary == source else body + f" Development files for {source}."
      lines = _wrapped(text) + [" .", f" Second paragraph of {binary}."]
      if s in (7, 8) and binary == source:
        lines = _wrapped(shared_body)  # identical bodies: only src007's is kept
      translation.append(f"Package: {binary}\nDescription-md5: {s:032x}\n"
                         f"Description-en: Synopsis of {binary}\n" + "\n".join(lines) + "\n")
      source_line = "" if binary == source else f"Source: {source} (1.{s}-1)\n"
      packages.append(f"Package: {binary}\n{source_line}Version: 1.{s}-1\n"
                      f"Architecture: amd64\nDescription: Synopsis of {binary}\n"
                      f"Description-md5: {s:032x}\n")
      expected[binary] = source
  translation.append("Package: onlysynopsis\nDescription-md5: ff\nDescription-en: No body\n")
  with open(os.path.join(directory, "mirror_dists_suite_main_i18n_Translation-en"), "w") as f:
    f.write("\n".join(translation))
  with open(os.path.join(directory, "mirror_dists_suite_main_binary-amd64_Packages"), "w") as f:
    f.write("\n".join(packages))
  with open(os.path.join(directory, "mirror_dists_suite_InRelease"), "w") as f:
    f.write("Origin: Test\nDate: Sat, 01 Jan 2000 00:00:00 UTC\n")
  del expected["src008"]  # same body as src007, which comes first
  return expected


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """A raw snapshot of fake apt lists, and the TFDS dataset built from it."""
  root = tmp_path_factory.mktemp("debian")
  lists = root / "lists"
  lists.mkdir()
  expected = write_fake_lists(str(lists))
  raw_dir = str(root / "data" / "raw" / "debian")
  if shutil.which(debian.APT_HELPER):
    debian.snapshot_apt_lists(raw_dir, lists_dir=str(lists))
  else:  # not a Debian machine: same result, minus the decompression helper
    shutil.copytree(lists, raw_dir)
    (root / "data" / "raw" / "debian" / debian.PROVENANCE).write_text("{}")
  builder = debian.prepare_debian(str(root / "data"), raw_dir=raw_dir)
  return builder, expected, raw_dir, str(root / "data")


def _read(builder, split):
  source = builder.as_data_source(split)
  return [{k: v.decode() for k, v in source[i].items()} for i in range(len(source))]


def test_splits_partition_packages_by_source(built):
  builder, expected, _, _ = built
  rows = {split: _read(builder, split) for split in ("train", "validation", "test")}
  assert all(rows.values()), {k: len(v) for k, v in rows.items()}
  got = {r["package"]: r["source"] for split_rows in rows.values() for r in split_rows}
  assert got == expected  # binary -> source from Packages ("Source: x (version)" handled)
  sources_by_split = {s: {r["source"] for r in rs} for s, rs in rows.items()}
  assert not sources_by_split["train"] & sources_by_split["validation"]
  assert not sources_by_split["train"] & sources_by_split["test"]
  assert not sources_by_split["validation"] & sources_by_split["test"]
  for split, split_rows in rows.items():
    assert all(debian.split_for(r["source"]) == split for r in split_rows)
  n = sum(len(v) for v in rows.values())
  assert builder.info.splits["train"].num_examples + builder.info.splits["test"].num_examples + \
      builder.info.splits["validation"].num_examples == n


def test_dedupes_bodies_and_drops_empty(built):
  builder, _, _, _ = built
  rows = [r for s in ("train", "validation", "test") for r in _read(builder, s)]
  texts = [r["text"] for r in rows]
  assert len(texts) == len(set(texts))
  packages = {r["package"] for r in rows}
  assert "src007" in packages and "src008" not in packages and "onlysynopsis" not in packages


def test_fields_and_paragraphs(built):
  builder, _, _, _ = built
  row = next(r for s in ("train", "validation", "test") for r in _read(builder, s)
             if r["package"] == "libsrc003-dev")
  assert row["synopsis"] == "Synopsis of libsrc003-dev"
  first, second = row["text"].split("\n")  # wrapped lines re-joined; ' .' -> paragraph break
  assert first.startswith("src003 is a ") and first.endswith("Development files for src003.")
  assert second == "Second paragraph of libsrc003-dev."


def test_provenance_next_to_raw_and_dataset(built):
  builder, _, raw_dir, _ = built
  assert os.path.isfile(os.path.join(builder.data_dir, debian.PROVENANCE))
  if shutil.which(debian.APT_HELPER):
    prov = json.load(open(os.path.join(raw_dir, debian.PROVENANCE)))
    files = {f["file"]: f for f in prov["files"]}
    assert set(files) == {"mirror_dists_suite_main_i18n_Translation-en",
                          "mirror_dists_suite_main_binary-amd64_Packages"}
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in files.values())
    assert prov["releases"][0]["date"] == "Sat, 01 Jan 2000 00:00:00 UTC"
    packages = os.path.join(raw_dir, "mirror_dists_suite_main_binary-amd64_Packages")
    reduced = open(packages).read()
    assert "Version:" not in reduced and "Source: src001 (1.1-1)" in reduced


def test_prepare_is_idempotent(built, monkeypatch):
  _, _, _, data_dir = built
  monkeypatch.setattr(debian, "fetch_debian_translations",
                      lambda raw_dir: pytest.fail("prepared dataset must not be re-fetched"))
  assert debian.prepare_debian(data_dir).is_prepared()


def test_open_source_debian_gives_str(built):
  _, _, _, data_dir = built
  src = sources.open_source("debian", "validation", data_dir)
  assert len(src) > 0 and all(isinstance(v, str) for v in src[0].values())
  with pytest.raises(ValueError, match=r"unknown split 'dev'.*'train', 'validation'"):
    sources.open_source("debian", "dev", data_dir)


def test_description_body_layout():
  lines = ["Intro text that is", "wrapped over lines.", ".", "Features:", " - first item that",
           "   continues here", " - second item", ".", "  verbatim  line", "  another one",
           "Trailing wrapped", "text."]
  assert debian.description_body(lines) == (
      "Intro text that is wrapped over lines.\n"
      "Features:\n- first item that continues here\n- second item\n"
      "verbatim  line\nanother one\nTrailing wrapped text.")
  assert debian.description_body([".", ""]) == ""


def test_malformed_list_names_file_and_line(tmp_path):
  bad = tmp_path / "x_i18n_Translation-en"
  bad.write_text("Package: a\nthis line has no colon\n")
  with pytest.raises(ValueError, match=r"x_i18n_Translation-en:2: expected 'Field: value'"):
    list(debian.deb822_stanzas(str(bad)))


def test_split_for_is_stable_and_roughly_90_5_5():
  names = [f"pkg{i}" for i in range(20000)]
  counts = {s: 0 for s in ("train", "validation", "test")}
  for name in names:
    counts[debian.split_for(name)] += 1
  assert 0.88 < counts["train"] / len(names) < 0.92
  assert 0.04 < counts["test"] / len(names) < 0.06
  assert [debian.split_for(n) for n in names[:50]] == [debian.split_for(n) for n in names[:50]]


def test_missing_raw_dir_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no \\*_i18n_Translation-en"):
    debian.read_descriptions(str(tmp_path))
