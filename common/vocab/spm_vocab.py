"""SentencePiece vocabularies: ours (pad 0 / eos 1 / unk 2 / bos 3, plus T5 sentinels) and
Hugging Face T5's `spiece.model` (no bos).

A saved model `X.model` may have a JSON sidecar `X.json`; its "extra_ids" key (default 0) is
what makes `load_vocab(path)` rebuild exactly the vocabulary that was saved.
"""
from __future__ import annotations

import json
import os
from typing import Iterable

import sentencepiece as spm

from common.vocab.base import (BOS_ID, CONTROL_SYMBOLS, EOS_ID, PAD_ID, SENTINEL_RE, UNK_ID,
                               RoleIds, atomic_write_bytes, sidecar_path)


def _processor(model_path: str) -> spm.SentencePieceProcessor:
  try:
    return spm.SentencePieceProcessor(model_file=model_path)
  except (RuntimeError, OSError) as e:  # a truncated or foreign file
    raise ValueError(f"'{model_path}' is not a readable SentencePiece model ("
                     f"{' '.join(str(e).split())[:200]})") from None


class SentencePieceVocab(RoleIds):
  """SentencePiece model (pad 0 / eos 1 / unk 2 / bos 3) plus `extra_ids` T5 sentinels."""

  def __init__(self, model_path: str, extra_ids: int = 0):
    if not os.path.isfile(model_path):
      raise FileNotFoundError(
        f"SentencePiece model '{model_path}' not found; train one with: python -m "
        "common.tokenizer --dataset=... --data_dir=... --output=PATH.model")
    if extra_ids < 0:
      raise ValueError(f"extra_ids must be >= 0, got {extra_ids}")
    self.model_path = model_path
    self.extra_ids = extra_ids
    self._sp = _processor(model_path)
    self._sp_size = self._sp.get_piece_size()
    expected = {"pad": PAD_ID, "eos": EOS_ID, "unk": UNK_ID, "bos": BOS_ID}
    actual = {"pad": self._sp.pad_id(), "eos": self._sp.eos_id(),
         "unk": self._sp.unk_id(), "bos": self._sp.bos_id()}
    if actual != expected:
      raise ValueError(f"SentencePiece model '{model_path}' has special ids {actual}; this "
              f"library needs {expected} (train it with common.tokenizer)")
    self.vocab_size = self._sp_size + extra_ids
    self.pad_id, self.eos_id, self.unk_id, self.bos_id = PAD_ID, EOS_ID, UNK_ID, BOS_ID

  @property
  def path(self) -> str:
    """`model_path` under the name every backend has (`TokenizersVocab.path`)."""
    return self.model_path

  def role_id(self, role: str) -> int:
    piece = f"[{role.upper()}]"
    i = self._sp.piece_to_id(piece)
    if i == self.unk_id or not self._sp.is_control(i):
      raise ValueError(f"SentencePiece model '{self.model_path}' has no control symbol "
              f"{piece!r}; retrain it with common.tokenizer (it adds "
              f"{CONTROL_SYMBOLS})")
    return i

  def encode(self, text: str) -> list[int]:
    """Token ids for `text`; no bos/eos added (the data pipeline decides that)."""
    return self._sp.encode(text, out_type=int)

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    """Encode many texts in one C++ call (multithreaded inside SentencePiece)."""
    return self._sp.encode(list(texts), out_type=int)

  def decode(self, ids: Iterable[int]) -> str:
    """Text for `ids`: stops at the first eos, drops pad, prints sentinels as <extra_id_N>."""
    parts: list[str] = []
    run: list[int] = []

    def flush() -> None:
      if run:
        text = self._sp.decode(run)
        # SentencePiece drops a leading space; keep it when this run follows a sentinel.
        if parts and self._sp.id_to_piece(run[0]).startswith("\u2581"):
          text = " " + text
        parts.append(text)
        run.clear()

    for i in (int(i) for i in ids):
      if i == self.eos_id:
        break
      if i == self.pad_id:
        continue
      if not 0 <= i < self.vocab_size:
        raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
      if i >= self._sp_size:
        flush()
        parts.append(f"<extra_id_{self.vocab_size - 1 - i}>")
      else:
        run.append(i)
    flush()
    return "".join(parts)

  def piece_to_id(self, piece: str) -> int:
    """Id of a piece or '<extra_id_N>'; unknown pieces raise rather than silently become unk."""
    m = SENTINEL_RE.fullmatch(piece)
    if m:
      return self.sentinel_id(int(m.group(1)))
    i = self._sp.piece_to_id(piece)
    if i == self.unk_id and piece != self._sp.id_to_piece(self.unk_id):
      raise ValueError(f"piece {piece!r} is not in the vocabulary '{self.model_path}'")
    return i

  def sentinel_id(self, i: int) -> int:
    """Id of <extra_id_i>: the last id for i=0, counting down (T5 convention)."""
    if not 0 <= i < self.extra_ids:
      raise ValueError(f"sentinel <extra_id_{i}> does not exist: this vocabulary has "
              f"extra_ids={self.extra_ids}")
    return self.vocab_size - 1 - i

  def save_to(self, directory: str) -> str:
    """Copy the model (+ sidecar with extra_ids and the source's provenance) into `directory`.

    Returns the copied model path; `load_vocab` accepts it or `directory`.
    """
    target = os.path.join(directory, os.path.basename(self.model_path))
    meta = {}
    if os.path.isfile(sidecar_path(self.model_path)):
      with open(sidecar_path(self.model_path)) as f:
        meta = json.load(f)
    meta.update(backend="sentencepiece", extra_ids=self.extra_ids)
    if os.path.abspath(target) != os.path.abspath(self.model_path):
      with open(self.model_path, "rb") as f:
        atomic_write_bytes(target, f.read())
    atomic_write_bytes(sidecar_path(target), json.dumps(meta, indent=2).encode())
    return target


class NoBosSentencePieceVocab(SentencePieceVocab):
  """A SentencePiece model with pad 0 / eos 1 / unk 2 and no bos (Hugging Face T5's
  spiece.model). `bos_id` is pad, T5's decoder-start token; everything else is
  SentencePieceVocab. `load_vocab` picks it from the sidecar's backend."""

  BACKEND = "sentencepiece_nobos"

  def __init__(self, model_path: str, extra_ids: int = 0):  # pylint: disable=super-init-not-called
    if not os.path.isfile(model_path):
      raise FileNotFoundError(f"SentencePiece model '{model_path}' not found")
    if extra_ids < 0:
      raise ValueError(f"extra_ids must be >= 0, got {extra_ids}")
    sp = _processor(model_path)
    actual = {"pad": sp.pad_id(), "eos": sp.eos_id(), "unk": sp.unk_id(), "bos": sp.bos_id()}
    if actual != {"pad": PAD_ID, "eos": EOS_ID, "unk": UNK_ID, "bos": -1}:
      raise ValueError(f"SentencePiece model '{model_path}' has special ids {actual}; expected "
                       "T5's pad 0, eos 1, unk 2 and no bos")
    self.model_path, self.extra_ids, self._sp, self._sp_size = (
        model_path, extra_ids, sp, sp.get_piece_size())
    self.vocab_size = self._sp_size + extra_ids
    self.pad_id, self.eos_id, self.unk_id, self.bos_id = PAD_ID, EOS_ID, UNK_ID, PAD_ID

  def save_to(self, directory: str) -> str:
    target = super().save_to(directory)
    with open(sidecar_path(target)) as f:
      meta = json.load(f)
    meta["backend"] = self.BACKEND
    atomic_write_bytes(sidecar_path(target), json.dumps(meta, indent=2).encode())
    return target
