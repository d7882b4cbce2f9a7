"""What every tokenizer backend shares: the `Vocabulary` protocol, the id convention and atomic
file writes.

Id convention (T5 + bos): pad 0, eos 1, unk 2, bos 3. Optional sentinels <extra_id_N> are
appended after the backend's pieces and count DOWN from the last id, as in T5.
"""
from __future__ import annotations

import os
import re
import tempfile
from typing import Iterable, Protocol, runtime_checkable

PAD_ID, EOS_ID, UNK_ID, BOS_ID = 0, 1, 2, 3
CONTROL_SYMBOLS = ("[CLS]", "[SEP]", "[MASK]")
SENTINEL_RE = re.compile(r"<extra_id_(\d+)>")


@runtime_checkable
class Vocabulary(Protocol):
  """What models and pipelines may rely on; a HF `tokenizers` backend would implement it too."""

  vocab_size: int
  pad_id: int
  eos_id: int
  unk_id: int
  bos_id: int
  path: str  # the tokenizer file it was loaded from (.model or tokenizer.json)

  @property
  def cls_id(self) -> int: ...
  @property
  def sep_id(self) -> int: ...
  @property
  def mask_id(self) -> int: ...
  def encode(self, text: str) -> list[int]: ...
  def encode_batch(self, texts: list[str]) -> list[list[int]]: ...
  def decode(self, ids: Iterable[int]) -> str: ...
  def piece_to_id(self, piece: str) -> int: ...
  def sentinel_id(self, i: int) -> int: ...
  def save_to(self, directory: str) -> str: ...


class RoleIds:
  """The [CLS] / [SEP] / [MASK] ids of a backend, from its `role_id("cls" | "sep" | "mask")`."""

  def role_id(self, role: str) -> int:
    raise NotImplementedError

  @property
  def cls_id(self) -> int:
    return self.role_id("cls")

  @property
  def sep_id(self) -> int:
    return self.role_id("sep")

  @property
  def mask_id(self) -> int:
    return self.role_id("mask")


def sidecar_path(model_path: str) -> str:
  """`X.model` -> `X.json`: where metadata (extra_ids, provenance) about a model lives."""
  return os.path.splitext(model_path)[0] + ".json"


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Write via a temp file in the same dir + os.replace, so readers never see half a file."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path))
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
