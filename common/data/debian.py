"""Debian package descriptions: real English text obtainable offline through apt.

`fetch_debian_translations` snapshots apt's Translation-en (descriptions) and Packages (binary ->
source package) lists into a raw dir with provenance; the `DebianDescriptions` TFDS builder turns
that raw dir into ArrayRecord splits readable without TensorFlow (`builder.as_data_source`).
Splits hash the SOURCE package, so sibling binaries (which share text) never straddle splits.
"""
from __future__ import annotations

import datetime
import glob
import hashlib
import json
import os
import shutil
import subprocess
from typing import Iterator

import tensorflow_datasets as tfds
from etils import epath

from common.data.staging import staged_dir

APT_LISTS_DIR = "/var/lib/apt/lists"
APT_SOURCES = ("/etc/apt/sources.list", "/etc/apt/sources.list.d")
APT_UPDATE = ("apt-get", "update", "-o", "Acquire::Languages=en")
APT_HELPER = "/usr/lib/apt/apt-helper"
PROVENANCE = "provenance.json"
FIELDS = ("package", "source", "synopsis", "text")
_BULLETS = ("* ", "- ", "+ ", "o ")


def raw_dir_for(data_dir: str) -> str:
  """Where `prepare_debian` keeps the apt snapshot the builder reads (its TFDS manual dir)."""
  return os.path.join(data_dir, "raw", "debian")


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def _plain_name(list_path: str) -> str:
  """apt list file name without its compression suffix (.lz4/.gz/.xz/...)."""
  name = os.path.basename(list_path)
  stem, ext = os.path.splitext(name)
  return stem if ext in (".lz4", ".gz", ".xz", ".bz2", ".zst", ".lzma") else name


def _apt_list_text(list_path: str) -> Iterator[bytes]:
  """Decompressed lines of an apt list, via apt's own helper (knows every apt compression)."""
  with subprocess.Popen([APT_HELPER, "cat-file", list_path], stdout=subprocess.PIPE) as proc:
    assert proc.stdout is not None
    yield from proc.stdout
  if proc.returncode:
    raise RuntimeError(f"'{APT_HELPER} cat-file {list_path}' failed (exit {proc.returncode})")


def _apt_source_lines() -> list[str]:
  """Enabled apt source definitions, recorded so the snapshot can be traced to its mirror."""
  paths = [APT_SOURCES[0]] + sorted(glob.glob(os.path.join(APT_SOURCES[1], "*.list")) +
                                    glob.glob(os.path.join(APT_SOURCES[1], "*.sources")))
  lines = []
  for path in paths:
    if os.path.isfile(path):
      with open(path, errors="replace") as f:
        lines += [f"{path}: {l.rstrip()}" for l in f if l.strip()]
  return lines


def _release_date(in_release: str) -> str | None:
  with open(in_release, errors="replace") as f:
    for line in f:
      if line.startswith("Date:"):
        return line.partition(":")[2].strip()
  return None


def fetch_debian_translations(raw_dir: str) -> list[str]:
  """Run `apt-get update` (root) and snapshot its English descriptions into `raw_dir`."""
  if os.geteuid() != 0:
    raise PermissionError("fetching Debian descriptions runs 'apt-get update', which needs "
                          f"root; run as root or copy an existing raw dir to {raw_dir}")
  done = subprocess.run(APT_UPDATE, capture_output=True, text=True)
  if done.returncode:
    tail = (done.stderr.strip().splitlines() or ["no stderr"])[-1]
    raise RuntimeError(f"'{' '.join(APT_UPDATE)}' failed (exit {done.returncode}): {tail}")
  return snapshot_apt_lists(raw_dir)


def snapshot_apt_lists(raw_dir: str, lists_dir: str = APT_LISTS_DIR) -> list[str]:
  """Copy apt's Translation-en and Packages lists from `lists_dir` into `raw_dir`.

  Writes each Translation-en list as plain text, each Packages list reduced to its `Package:` /
  `Source:` fields (all the builder needs; the original's sha256 is kept), and provenance.json.
  The directory appears atomically (built under a temp name, then renamed). Returns the files.
  """
  def lists(pattern: str) -> list[str]:
    return sorted(p for p in glob.glob(os.path.join(lists_dir, pattern)) if os.path.isfile(p))

  translations, packages = lists("*_i18n_Translation-en*"), lists("*_Packages*")
  if not translations:
    raise FileNotFoundError(f"no *_i18n_Translation-en* lists in {lists_dir}; run "
                            f"'{' '.join(APT_UPDATE)}' with a Debian source configured")

  with staged_dir(raw_dir) as tmp:
    files = []
    for src in translations + packages:
      is_packages = src in packages
      dst = os.path.join(tmp, _plain_name(src))
      with open(dst, "wb") as out:
        for line in _apt_list_text(src):
          keep = line.startswith((b"Package:", b"Source:")) or not line.strip()
          if keep or not is_packages:
            out.write(line)
      files.append({"file": os.path.basename(dst), "sha256": _sha256(dst),
                    "bytes": os.path.getsize(dst),
                    "content": "Package/Source fields only" if is_packages else "full",
                    "apt_list": src, "apt_list_sha256": _sha256(src),
                    "apt_list_bytes": os.path.getsize(src)})
    releases = [{"apt_list": p, "sha256": _sha256(p), "date": _release_date(p)}
                for p in sorted(glob.glob(os.path.join(lists_dir, "*_InRelease")))]
    provenance = {
        "what": "Debian package descriptions (Translation-en), binary->source map (Packages)",
        "fetched_at": datetime.datetime.now(datetime.timezone.utc).isoformat("T", "seconds"),
        "command": " ".join(APT_UPDATE),
        "apt_sources": _apt_source_lines(),
        "releases": releases,
        "files": files,
    }
    with open(os.path.join(tmp, PROVENANCE), "w") as f:
      json.dump(provenance, f, indent=2)
  return [os.path.join(raw_dir, f["file"]) for f in files] + [os.path.join(raw_dir, PROVENANCE)]


def deb822_stanzas(path: str) -> Iterator[dict[str, list[str]]]:
  """Parse an apt list: each stanza maps field -> [first-line value, *continuation lines].

  Continuation lines keep their text after the one leading space that marks them.
  """
  fields: dict[str, list[str]] = {}
  key = None
  with open(path, encoding="utf-8", errors="replace") as f:
    for lineno, line in enumerate(f, 1):
      line = line.rstrip("\n")
      if not line.strip():
        if fields:
          yield fields
        fields, key = {}, None
      elif line[0] in " \t":
        if key is None:
          raise ValueError(f"{path}:{lineno}: continuation line outside a field: "
                           f"{line!r}")
        fields[key].append(line[1:])
      else:
        key, colon, value = line.partition(":")
        if not colon:
          raise ValueError(f"{path}:{lineno}: expected 'Field: value', got {line!r}")
        fields[key] = [value.strip()]
  if fields:
    yield fields


def description_body(lines: list[str]) -> str:
  """Debian long description -> plain text, paragraphs joined with '\\n'.

  ' .' separates paragraphs; wrapped lines are re-joined with a space; bullet items (with their
  indented continuation lines) and verbatim lines (extra leading space) keep a line of their
  own, as apt displays them.
  """
  paragraphs: list[str] = []
  out: list[str] = []
  prev = None  # kind of the last output line: "wrap", "item" or "verbatim"
  bullet = None  # indent of the open bullet item, whose deeper-indented lines continue it
  for line in lines:
    text = line.strip()
    if text == ".":
      if out:
        paragraphs.append("\n".join(out))
      out, prev, bullet = [], None, None
      continue
    if not text:
      continue
    indent = len(line) - len(line.lstrip())
    if text.startswith(_BULLETS):
      out.append(text)
      prev, bullet = "item", indent
    elif (bullet is not None and indent > bullet) or (indent == 0 and prev == "wrap"):
      out[-1] += " " + text
    else:
      out.append(text)
      prev, bullet = ("wrap" if indent == 0 else "verbatim"), None
  if out:
    paragraphs.append("\n".join(out))
  return "\n".join(paragraphs)


def split_for(source: str) -> str:
  """Stable ~90/5/5 split from a hash of the source package name (same on every machine)."""
  bucket = int.from_bytes(hashlib.sha256(source.encode()).digest()[:8], "big") % 100
  return "train" if bucket < 90 else "validation" if bucket < 95 else "test"


def read_descriptions(raw_dir: str) -> dict[str, list[dict[str, str]]]:
  """Raw dir -> {split: [example]}: non-empty bodies, identical bodies kept once (first wins)."""
  translations = sorted(glob.glob(os.path.join(raw_dir, "*_i18n_Translation-en")))
  if not translations:
    raise FileNotFoundError(f"no *_i18n_Translation-en files in {raw_dir}; fetch them with "
                            "common.data.debian.fetch_debian_translations(raw_dir)")
  source_of: dict[str, str] = {}
  for path in sorted(glob.glob(os.path.join(raw_dir, "*_Packages"))):
    for st in deb822_stanzas(path):
      if "Package" in st and "Source" in st:
        # "Source: name (version)" when the binary's version differs from the source's.
        source_of.setdefault(st["Package"][0], st["Source"][0].split(" ")[0])
  splits: dict[str, list[dict[str, str]]] = {"train": [], "validation": [], "test": []}
  seen: set[str] = set()
  for path in translations:
    for st in deb822_stanzas(path):
      if "Package" not in st or "Description-en" not in st:
        continue
      package = st["Package"][0]
      synopsis, *body_lines = st["Description-en"]
      body = description_body(body_lines)
      if not body or body in seen:
        continue
      seen.add(body)
      source = source_of.get(package, package)
      md5 = st.get("Description-md5", [""])[0]
      splits[split_for(source)].append({"key": f"{package}:{md5}", "package": package,
                                        "source": source, "synopsis": synopsis, "text": body})
  return splits


class DebianDescriptions(tfds.core.GeneratorBasedBuilder):
  """TFDS builder over a raw dir written by `fetch_debian_translations` (its manual dir)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Translation-en long descriptions; splits by source-package hash."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Run common.data.debian.fetch_debian_translations(raw_dir) as "
                                  "root (uses apt-get update) and pass raw_dir as manual_dir.")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's default lookup imports `importlib_resources` (not installed, and not needed on
    # Python >= 3.9) for builders defined inside a package; this file is the answer anyway.
    return epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Debian package long descriptions (text) with their one-line synopsis.",
        features=tfds.features.FeaturesDict({k: tfds.features.Text() for k in FIELDS}),
        supervised_keys=("text", "synopsis"),
        homepage="https://www.debian.org/doc/debian-policy/ch-controlfields.html#description",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    raw_dir = os.fspath(dl_manager.manual_dir)
    provenance = os.path.join(raw_dir, PROVENANCE)
    if not os.path.isfile(provenance):
      raise FileNotFoundError(f"{provenance} missing: {raw_dir} was not written by "
                              "fetch_debian_translations")
    # self.data_dir is TFDS's incomplete dir here, so provenance appears with the dataset.
    shutil.copy(provenance, os.path.join(self.data_dir, PROVENANCE))
    return {split: self._generate_examples(examples)
            for split, examples in read_descriptions(raw_dir).items()}

  def _generate_examples(self, examples: list[dict[str, str]]):
    for ex in examples:
      yield ex["key"], {k: ex[k] for k in FIELDS}


def debian_builder(data_dir: str) -> DebianDescriptions:
  return DebianDescriptions(data_dir=data_dir, file_format="array_record")


def prepare_debian(data_dir: str, raw_dir: str | None = None) -> DebianDescriptions:
  """Fetch (once) and build the dataset in `data_dir`; returns at once if already built."""
  builder = debian_builder(data_dir)
  if builder.is_prepared():
    return builder
  raw_dir = raw_dir or raw_dir_for(data_dir)
  if not os.path.isfile(os.path.join(raw_dir, PROVENANCE)):
    fetch_debian_translations(raw_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=raw_dir))
  return builder
