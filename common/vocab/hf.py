"""Vocabulary backend for Hugging Face `tokenizer.json` files (GPT-2 byte-level BPE, BERT
WordPiece, ...), read locally with the `tokenizers` library behind `common.vocab.Vocabulary`,
and moving tokenizers (Hugging Face T5's `spiece.model` too) between Hugging Face model
directories and work dirs.

Special-token ids are the source tokenizer's own (GPT-2: bos = eos = unk = pad =
<|endoftext|>; BERT: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103), not the
SentencePiece convention: code must use `vocab.pad_id` etc., never the constants. Roles come
from the source's tokenizer_config.json / special_tokens_map.json, else from well-known token
names, and are kept in a sidecar `<name>.meta.json` so `load_vocab` rebuilds the same vocabulary.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Iterable

import sentencepiece as spm
from absl import logging
from tokenizers import Tokenizer

from common.vocab.base import RoleIds, Vocabulary, atomic_write_bytes
from common.vocab.spm_vocab import NoBosSentencePieceVocab, SentencePieceVocab

ROLES = ("pad", "eos", "unk", "bos", "cls", "sep", "mask")
# Well-known spellings, most specific first; BERT has no eos/bos and uses [SEP]/[CLS].
_KNOWN = {
    "pad": ("<pad>", "[PAD]", "<|pad|>", "<|padding|>"),
    "eos": ("</s>", "<|endoftext|>", "<eos>", "<|eos|>", "[SEP]"),
    "bos": ("<s>", "<|endoftext|>", "<bos>", "<|bos|>", "[CLS]"),
    "unk": ("<unk>", "[UNK]", "<|unk|>"),
    "cls": ("[CLS]", "<cls>"),
    "sep": ("[SEP]", "<sep>"),
    "mask": ("[MASK]", "<mask>"),
}
# A role the tokenizer lacks takes another's token (HF's GPT-2: pad/unk = <|endoftext|>).
_FALLBACK = {"pad": "eos", "unk": "eos", "bos": "eos"}


def meta_path(tokenizer_path: str) -> str:
  return os.path.splitext(tokenizer_path)[0] + ".meta.json"


def _token_text(v) -> str | None:
  return v.get("content") if isinstance(v, dict) else v


def hf_special_tokens(hf_dir: str) -> dict[str, str]:
  """Roles named by an HF model directory's tokenizer_config.json / special_tokens_map.json."""
  out: dict[str, str] = {}
  for name in ("special_tokens_map.json", "tokenizer_config.json"):  # later file wins
    path = os.path.join(hf_dir, name)
    if os.path.isfile(path):
      with open(path) as f:
        data = json.load(f)
      for role in ROLES:
        text = _token_text(data.get(f"{role}_token"))
        if isinstance(text, str) and text:
          out[role] = text
  return out


class TokenizersVocab(RoleIds):
  """A `tokenizer.json` behind the `Vocabulary` protocol (no bos/eos added by `encode`).
  `extra_ids` counts its T5 sentinels <extra_id_0>, <extra_id_1>, ... (0 for most)."""

  def __init__(self, path: str, special_tokens: dict[str, str] | None = None):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"tokenizer file '{path}' not found")
    try:
      self._tok = Tokenizer.from_file(path)
    except Exception as e:  # the Rust error names what is wrong with the JSON
      raise ValueError(f"'{path}' is not a Hugging Face tokenizer.json: {e}") from e
    self.path = path
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    given = dict(special_tokens or {})
    for role, text in given.items():
      if role not in ROLES:
        raise ValueError(f"unknown special-token role {role!r}; valid: {ROLES}")
      if self._tok.token_to_id(text) is None:
        raise ValueError(f"special token {text!r} ({role}) is not in tokenizer '{path}'")
    self.special_tokens = {}
    for role in ROLES:
      text = given.get(role) or next(
          (t for t in _KNOWN[role] if self._tok.token_to_id(t) is not None), None)
      if text is not None:
        self.special_tokens[role] = text
    for role, other in _FALLBACK.items():
      if role not in self.special_tokens and other in self.special_tokens:
        self.special_tokens[role] = self.special_tokens[other]
    missing = [r for r in ("pad", "eos", "unk", "bos") if r not in self.special_tokens]
    if missing:
      raise ValueError(f"tokenizer '{path}' has no token for {missing}; name them in "
                       f"{meta_path(path)} under 'special_tokens' (e.g. {{\"eos\": \"</s>\"}})")
    self.pad_id, self.eos_id, self.unk_id, self.bos_id = (
        self.role_id(r) for r in ("pad", "eos", "unk", "bos"))
    self.extra_ids = 0
    while self._tok.token_to_id(f"<extra_id_{self.extra_ids}>") is not None:
      self.extra_ids += 1

  @classmethod
  def load(cls, path_or_dir: str) -> "TokenizersVocab":
    """From a tokenizer.json, or a directory holding one; reads the sidecar if present."""
    path = path_or_dir
    if os.path.isdir(path):
      path = os.path.join(path, "tokenizer.json")
    specials = None
    if os.path.isfile(meta_path(path)):
      with open(meta_path(path)) as f:
        specials = json.load(f).get("special_tokens")
    return cls(path, specials)

  def role_id(self, role: str) -> int:
    if role not in self.special_tokens:
      raise ValueError(f"tokenizer '{self.path}' has no {role} token")
    return self._tok.token_to_id(self.special_tokens[role])

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_batch(self, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Iterable[int]) -> str:
    """Text for `ids`: stops at the first eos, drops pad and other special tokens. Leading bos
    ids are a document start, not an end, even where bos == eos (GPT-2's <|endoftext|>)."""
    out = []
    for i in (int(i) for i in ids):
      if i == self.bos_id and not out:
        continue
      if i == self.eos_id:
        break
      if not 0 <= i < self.vocab_size:
        raise ValueError(f"token id {i} is outside the vocabulary [0, {self.vocab_size})")
      if i != self.pad_id:
        out.append(i)
    return self._tok.decode(out, skip_special_tokens=True)

  def piece_to_id(self, piece: str) -> int:
    i = self._tok.token_to_id(piece)
    if i is None:
      raise ValueError(f"piece {piece!r} is not in the vocabulary '{self.path}'")
    return i

  def sentinel_id(self, i: int) -> int:
    tid = self._tok.token_to_id(f"<extra_id_{i}>")
    if tid is None:
      raise ValueError(f"sentinel <extra_id_{i}> does not exist in tokenizer '{self.path}'")
    return tid

  def save_to(self, directory: str) -> str:
    """Copies tokenizer.json + its sidecar (special-token roles) into `directory`."""
    target = os.path.join(directory, "tokenizer.json")
    if os.path.abspath(target) != os.path.abspath(self.path):
      with open(self.path, "rb") as f:
        atomic_write_bytes(target, f.read())
    meta = {"backend": "tokenizers", "special_tokens": self.special_tokens,
            "vocab_size": self.vocab_size}
    atomic_write_bytes(meta_path(target), json.dumps(meta, indent=2).encode())
    return target


def _sentencepiece_vocab(path: str, extra_ids: int) -> SentencePieceVocab | None:
  """Ours (bos 3) or T5's (no bos); None for a model with other special ids."""
  for cls in (SentencePieceVocab, NoBosSentencePieceVocab):
    try:
      return cls(path, extra_ids=extra_ids)
    except ValueError:
      continue
  return None


# --------------------------------------------------------------------------- HF dirs <-> work dirs


def _extra_ids(hf_dir: str, hf_cfg: dict, sp_size: int) -> int:
  """T5 sentinels: tokenizer_config.json's extra_ids, else HF's default 100 when the model's
  vocab has room for them (T5: 32000 pieces + 100 sentinels, padded to 32128), else 0."""
  path = os.path.join(hf_dir, "tokenizer_config.json")
  if os.path.isfile(path):
    with open(path) as f:
      config = json.load(f)
    if "extra_ids" in config:
      return int(config["extra_ids"])
  return 100 if hf_cfg.get("vocab_size", 0) >= sp_size + 100 else 0


def import_tokenizer(hf_dir: str, vocab_dir: str, hf_cfg: dict) -> str | None:
  """Copies the HF directory's tokenizer into `vocab_dir`: spiece.model (T5) in SentencePiece
  form, else tokenizer.json. Returns its path; None (with a warning) when there is none."""
  spiece = os.path.join(hf_dir, "spiece.model")
  if os.path.isfile(spiece):
    size = spm.SentencePieceProcessor(model_file=spiece).get_piece_size()
    vocab = _sentencepiece_vocab(spiece, _extra_ids(hf_dir, hf_cfg, size))
    if vocab is not None:
      return vocab.save_to(vocab_dir)
    logging.warning("%s has special ids this library does not support; not imported", spiece)
  path = os.path.join(hf_dir, "tokenizer.json")
  if os.path.isfile(path):
    return TokenizersVocab(path, hf_special_tokens(hf_dir)).save_to(vocab_dir)
  logging.warning("%s has no spiece.model or tokenizer.json: the work dir gets no vocab/", hf_dir)
  return None


def export_tokenizer(vocab: Vocabulary, out_dir: str, sp_tokenizer_class: str | None) -> None:
  """The work dir's tokenizer into an HF directory: tokenizer.json, or a SentencePiece model as
  spiece.model (loadable by `sp_tokenizer_class`, e.g. T5Tokenizer), each with a
  tokenizer_config.json naming its special tokens."""
  if isinstance(vocab, TokenizersVocab):
    shutil.copyfile(vocab.path, os.path.join(out_dir, "tokenizer.json"))
    config = {f"{role}_token": text for role, text in vocab.special_tokens.items()}
  elif isinstance(vocab, SentencePieceVocab):
    shutil.copyfile(vocab.model_path, os.path.join(out_dir, "spiece.model"))
    sp = spm.SentencePieceProcessor(model_file=vocab.model_path)
    config = {"extra_ids": vocab.extra_ids, "pad_token": sp.id_to_piece(vocab.pad_id),
              "eos_token": sp.id_to_piece(vocab.eos_id), "unk_token": sp.id_to_piece(vocab.unk_id)}
    if sp_tokenizer_class:
      config["tokenizer_class"] = sp_tokenizer_class
  else:
    return
  with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
