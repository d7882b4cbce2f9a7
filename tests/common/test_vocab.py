"""SentencePieceVocab: ids, round trips, sentinels, save/load, and clear errors."""
import hashlib
import json
import os
import random

import pytest
import sentencepiece as spm

from common import vocab as vocab_lib
from common.tokenizer import train_sentencepiece

_SYLLABLES = ["ka", "to", "ri", "mu", "sen", "lo", "pa", "de", "bi", "qua", "zor", "an", "el",
              "is", "ot", "um"]


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
  """Made-up sentences over a few hundred made-up words (enough for a ~350-piece model)."""
  rng = random.Random(seed)
  words = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(300)]
  return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 20))) + "." for _ in range(n)]


def train_tiny_vocab(directory: str, vocab_size: int = 350) -> str:
  return train_sentencepiece(synthetic_texts(2000), os.path.join(directory, "tiny.model"),
                             vocab_size, metadata={"dataset": "synthetic"})


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
  return train_tiny_vocab(str(tmp_path_factory.mktemp("vocab")))


def test_special_ids(model_path):
  v = vocab_lib.SentencePieceVocab(model_path)
  assert (v.pad_id, v.eos_id, v.unk_id, v.bos_id) == (0, 1, 2, 3)
  assert [v.piece_to_id(p) for p in ("<pad>", "</s>", "<unk>", "<s>")] == [0, 1, 2, 3]
  assert (v.cls_id, v.sep_id, v.mask_id) == (4, 5, 6)
  assert v.vocab_size == 350
  assert isinstance(v, vocab_lib.Vocabulary)


def test_encode_decode_round_trip(model_path):
  v = vocab_lib.SentencePieceVocab(model_path)
  for text in ["kato rimu senlo.", "zor an el, is ot", "unseen wörds ÿ€ 42 ✓"]:
    ids = v.encode(text)
    assert v.eos_id not in ids and v.bos_id not in ids
    assert v.decode(ids) == text  # byte_fallback: nothing becomes <unk>
  assert v.encode_batch(["kato", "rimu"]) == [v.encode("kato"), v.encode("rimu")]


def test_decode_stops_at_eos_and_drops_pad(model_path):
  v = vocab_lib.SentencePieceVocab(model_path)
  ids = v.encode("kato rimu")
  assert v.decode([0] + ids + [0, 0]) == "kato rimu"
  assert v.decode(ids + [v.eos_id] + v.encode("zor")) == "kato rimu"


def test_sentinels_count_down_from_last_id(model_path):
  v = vocab_lib.SentencePieceVocab(model_path, extra_ids=5)
  assert v.vocab_size == 355
  assert [v.sentinel_id(i) for i in range(5)] == [354, 353, 352, 351, 350]
  assert v.piece_to_id("<extra_id_2>") == 352
  ids = v.encode("kato") + [v.sentinel_id(0)] + v.encode("zor an") + [v.sentinel_id(4)]
  assert v.decode(ids) == "kato<extra_id_0> zor an<extra_id_4>"
  with pytest.raises(ValueError, match="extra_ids=5"):
    v.sentinel_id(5)
  with pytest.raises(ValueError, match="outside the vocabulary"):
    v.decode([355])


def test_save_to_and_load_vocab_round_trip(model_path, tmp_path):
  v = vocab_lib.SentencePieceVocab(model_path, extra_ids=7)
  saved = v.save_to(str(tmp_path / "ckpt"))
  assert sorted(os.listdir(tmp_path / "ckpt")) == ["tiny.json", "tiny.model"]  # no temp files
  meta = json.loads((tmp_path / "ckpt" / "tiny.json").read_text())
  assert meta["extra_ids"] == 7 and meta["dataset"] == "synthetic"  # provenance travels along
  for where in (saved, str(tmp_path / "ckpt")):
    w = vocab_lib.load_vocab(where)
    assert w.vocab_size == v.vocab_size and w.sentinel_id(0) == v.sentinel_id(0)
    assert w.encode("kato rimu") == v.encode("kato rimu")


def test_load_vocab_dir_needs_exactly_one_model(tmp_path):
  with pytest.raises(FileNotFoundError, match="exactly one"):
    vocab_lib.load_vocab(str(tmp_path))


def test_missing_model_file_is_a_clear_error(tmp_path):
  missing = str(tmp_path / "nope.model")
  with pytest.raises(FileNotFoundError, match="nope.model.*common.tokenizer"):
    vocab_lib.SentencePieceVocab(missing)


def test_unknown_piece_is_an_error(model_path):
  with pytest.raises(ValueError, match="not in the vocabulary"):
    vocab_lib.SentencePieceVocab(model_path).piece_to_id("[NOPE]")


def _train_raw(tmp_path, name: str, **kwargs) -> str:
  prefix = str(tmp_path / name)
  spm.SentencePieceTrainer.train(sentence_iterator=iter(synthetic_texts(500)),
                                 model_prefix=prefix, vocab_size=150, minloglevel=2, **kwargs)
  return prefix + ".model"


def test_missing_control_symbol_is_a_clear_error(tmp_path):
  path = _train_raw(tmp_path, "noctl", pad_id=0, eos_id=1, unk_id=2, bos_id=3)
  v = vocab_lib.SentencePieceVocab(path)
  with pytest.raises(ValueError, match=r"no control symbol '\[MASK\]'"):
    _ = v.mask_id


def test_wrong_special_ids_is_a_clear_error(tmp_path):
  path = _train_raw(tmp_path, "defaults")  # SentencePiece defaults: unk 0, bos 1, eos 2
  with pytest.raises(ValueError, match="special ids"):
    vocab_lib.SentencePieceVocab(path)


def test_training_is_deterministic_and_records_provenance(model_path, tmp_path):
  again = train_tiny_vocab(str(tmp_path))
  digest = hashlib.sha256(open(again, "rb").read()).hexdigest()
  assert digest == hashlib.sha256(open(model_path, "rb").read()).hexdigest()
  meta = json.loads(open(vocab_lib.sidecar_path(again)).read())
  assert meta["sha256"] == digest and meta["vocab_size"] == 350
  assert meta["n_sentences"] == 2000 and meta["dataset"] == "synthetic"
