"""BERT's masked-LM corruption, drawn afresh every time a row is read (dynamic masking).

Per sequence: `rate` (15 %) of the non-special tokens are selected, at most `max_predictions`;
of those, 80 % become [MASK], 10 % a random token, 10 % stay unchanged, and the loss is taken on
every selected position. With whole-word masking the pieces of one word are selected together
(a SentencePiece piece starting with "▁" begins a word, a WordPiece piece starting with "##"
continues one; a special token ends one).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import sentencepiece as spm

from common.vocab import Vocabulary

WORD_START = "\u2581"
WORDPIECE_CONTINUATION = "##"
_SENTENCE_END = (".", "!", "?", ":", ";")


@dataclasses.dataclass(frozen=True)
class MaskingConfig:
  mask_id: int
  special_ids: np.ndarray          # never selected: pad, eos, unk, bos, [CLS], [SEP], [MASK]
  replacement_ids: np.ndarray      # what a "random token" is drawn from
  max_predictions: int
  rate: float = 0.15
  mask_frac: float = 0.8
  random_frac: float = 0.1
  word_starts: np.ndarray | None = None  # bool per id; set = whole-word masking

  def __post_init__(self):
    if not 0 < self.rate <= 1:
      raise ValueError(f"pretrain.mask_rate={self.rate} must be in (0, 1]")
    if self.mask_frac < 0 or self.random_frac < 0 or self.mask_frac + self.random_frac > 1:
      raise ValueError(f"pretrain.mask_token_frac={self.mask_frac} and random_token_frac="
                       f"{self.random_frac} must be >= 0 and sum to <= 1")
    if self.max_predictions < 1:
      raise ValueError(f"pretrain.max_predictions={self.max_predictions} must be >= 1")


def pieces(vocab: Vocabulary) -> list[str] | None:
  """Every id's piece string, for SentencePiece models and Hugging Face tokenizer.json files
  (ids past the model, i.e. sentinels, get ''); None for any other backend."""
  if getattr(vocab, "model_path", None):
    sp = spm.SentencePieceProcessor(model_file=vocab.model_path)
    get, n = sp.id_to_piece, sp.get_piece_size()
  elif str(getattr(vocab, "path", "")).endswith(".json"):
    from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
    tok = Tokenizer.from_file(vocab.path)
    get, n = tok.id_to_token, tok.get_vocab_size(with_added_tokens=True)
  else:
    return None
  return [(get(i) or "") if i < n else "" for i in range(vocab.vocab_size)]


def word_start_table(vocab: Vocabulary, *, required: bool = True) -> np.ndarray | None:
  """bool[vocab_size]: the id begins a word. SentencePiece: its piece starts with '▁';
  WordPiece (pieces continuing a word start with '##'): it does not start with '##'.
  Without pieces: an error if `required`, else None."""
  table = pieces(vocab)
  if table is None:
    if required:
      raise ValueError("whole-word masking needs a SentencePiece or WordPiece vocabulary; "
                       f"{type(vocab).__name__} exposes no pieces")
    return None
  if any(p.startswith(WORD_START) for p in table):
    return np.array([p.startswith(WORD_START) or not p for p in table])
  return np.array([not p.startswith(WORDPIECE_CONTINUATION) for p in table])


def sentence_end_table(vocab: Vocabulary) -> np.ndarray | None:
  """bool[vocab_size]: the piece ends a sentence (., !, ?, :, ;); None without pieces."""
  table = pieces(vocab)
  return None if table is None else np.array([p.endswith(_SENTENCE_END) for p in table])


def special_ids(vocab: Vocabulary) -> np.ndarray:
  return np.array(sorted({vocab.pad_id, vocab.eos_id, vocab.unk_id, vocab.bos_id, vocab.cls_id,
                          vocab.sep_id, vocab.mask_id}), np.int32)


def masking_config(vocab: Vocabulary, *, max_predictions: int, rate: float = 0.15,
                   mask_frac: float = 0.8, random_frac: float = 0.1,
                   whole_word: bool = False) -> MaskingConfig:
  """Masking for `vocab`: random replacements are drawn from its non-special ids only (never
  from the model's padded embedding rows past the tokenizer)."""
  special = special_ids(vocab)
  replacement = np.setdiff1d(np.arange(vocab.vocab_size, dtype=np.int32), special)
  return MaskingConfig(mask_id=vocab.mask_id, special_ids=special, replacement_ids=replacement,
                       max_predictions=max_predictions, rate=rate, mask_frac=mask_frac,
                       random_frac=random_frac,
                       word_starts=word_start_table(vocab) if whole_word else None)


def _select(tokens_L: np.ndarray, rng: np.random.Generator, cfg: MaskingConfig) -> np.ndarray:
  """Sorted positions to predict."""
  candidate = ~np.isin(tokens_L, cfg.special_ids)
  idx = np.flatnonzero(candidate)
  if not idx.size:
    return idx
  n = min(cfg.max_predictions, max(1, int(idx.size * cfg.rate + 0.5)))
  if cfg.word_starts is None:
    return np.sort(rng.permutation(idx)[:n])
  # A word starts at a "▁" piece or right after a non-candidate (special token, padding).
  starts = cfg.word_starts[tokens_L[idx]] | (np.diff(idx, prepend=-2) > 1)
  bounds = np.append(np.flatnonzero(starts), idx.size)
  chosen: list[np.ndarray] = []
  count = 0
  for w in rng.permutation(bounds.size - 1):  # BERT: skip a word that would overshoot n
    size = bounds[w + 1] - bounds[w]
    if count + size > n:
      continue
    chosen.append(idx[bounds[w]:bounds[w + 1]])
    count += size
    if count == n:
      break
  return np.sort(np.concatenate(chosen)) if chosen else idx[:0]


def mask_sequence(tokens_L: np.ndarray, rng: np.random.Generator, cfg: MaskingConfig
                  ) -> dict[str, np.ndarray]:
  """Corrupted `tokens` [L] plus the predictions: `mlm_positions`, `mlm_targets` and
  `mlm_weights` [max_predictions] (zero-padded, weight 0)."""
  positions = _select(tokens_L, rng, cfg)
  k = positions.size
  u = rng.random(k)
  to_mask = u < cfg.mask_frac
  to_random = (u >= cfg.mask_frac) & (u < cfg.mask_frac + cfg.random_frac)
  inputs = tokens_L.copy()
  inputs[positions[to_mask]] = cfg.mask_id
  inputs[positions[to_random]] = rng.choice(cfg.replacement_ids, int(to_random.sum()))
  p = cfg.max_predictions
  out = {"mlm_positions": np.zeros(p, np.int32), "mlm_targets": np.zeros(p, np.int32),
         "mlm_weights": np.zeros(p, np.float32)}
  out["mlm_positions"][:k] = positions
  out["mlm_targets"][:k] = tokens_L[positions]
  out["mlm_weights"][:k] = 1.0
  return {"tokens": inputs} | out


def mask_batch(tokens_BxL: np.ndarray, rng: np.random.Generator, cfg: MaskingConfig
               ) -> dict[str, np.ndarray]:
  """`mask_sequence` for every row, stacked."""
  rows = [mask_sequence(row, rng, cfg) for row in tokens_BxL]
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}
