"""Vocabularies: token ids <-> text behind one `Vocabulary` protocol, with SentencePiece
(`spm_vocab`) and Hugging Face `tokenizers` (`hf`) backends; `load_vocab` picks the backend of a
saved tokenizer."""
from __future__ import annotations

import glob
import json
import os

from common.vocab.base import (BOS_ID, CONTROL_SYMBOLS, EOS_ID, PAD_ID, UNK_ID, Vocabulary,
               atomic_write_bytes, sidecar_path)
from common.vocab.spm_vocab import NoBosSentencePieceVocab, SentencePieceVocab

__all__ = ["BOS_ID", "CONTROL_SYMBOLS", "EOS_ID", "PAD_ID", "UNK_ID", "NoBosSentencePieceVocab",
     "SentencePieceVocab", "Vocabulary", "atomic_write_bytes", "load_vocab", "sidecar_path"]


def load_vocab(path_or_dir: str) -> Vocabulary:
  """A vocabulary from a `.model` file or a directory holding exactly one (see save_to).

  A Hugging Face `tokenizer.json` (a `.json` path, or a directory holding one and no `.model`)
  loads with the `tokenizers` backend (common/vocab/hf.py). A file that is not a tokenizer is
  an error naming it.
  """
  path = path_or_dir
  if path.endswith(".json") or (
      os.path.isdir(path) and not glob.glob(os.path.join(path, "*.model"))
      and os.path.isfile(os.path.join(path, "tokenizer.json"))):
    from common.vocab.hf import TokenizersVocab  # pylint: disable=g-import-not-at-top
    return TokenizersVocab.load(path)
  if os.path.isdir(path):
    models = sorted(glob.glob(os.path.join(path, "*.model")))
    if len(models) != 1:
      raise FileNotFoundError(f"expected exactly one *.model in '{path}', found "
                              f"{[os.path.basename(m) for m in models]}")
    path = models[0]
  extra_ids, backend = 0, "sentencepiece"
  if os.path.isfile(sidecar_path(path)):
    try:
      with open(sidecar_path(path)) as f:
        meta = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{sidecar_path(path)}:{e.lineno}: not valid JSON ({e.msg})") from None
    extra_ids, backend = int(meta.get("extra_ids", 0)), meta.get("backend", backend)
  cls = NoBosSentencePieceVocab if backend == "sentencepiece_nobos" else SentencePieceVocab
  return cls(path, extra_ids=extra_ids)
