"""entry.run_vocab: sentinels added to a SentencePiece model, the dataset's own tokenizer, clear
errors otherwise."""
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from common import entry
from common.vocab.hf import TokenizersVocab
from common.vocab import SentencePieceVocab
from configs.t5 import get_config
from tests.common.test_vocab import train_tiny_vocab


def _cfg(tokenizer: str):
  cfg = get_config("tiny")
  cfg.data.tokenizer = tokenizer
  cfg.model.vocab_size = 512
  return cfg


def test_sentencepiece_gets_the_requested_sentinels(tmp_path):
  vocab = entry.run_vocab(_cfg(train_tiny_vocab(str(tmp_path))), extra_ids=10)
  assert isinstance(vocab, SentencePieceVocab) and vocab.extra_ids == 10
  assert vocab.vocab_size == 360 and vocab.sentinel_id(0) == 359


def test_tokenizer_json_with_other_sentinels_is_a_clear_error(tmp_path):
  tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.train_from_iterator(["alpha beta gamma", "beta gamma alpha"],
                          trainers.WordPieceTrainer(vocab_size=40, show_progress=False,
                                                    special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]"]))
  tok.save(str(tmp_path / "tokenizer.json"))
  assert TokenizersVocab(str(tmp_path / "tokenizer.json")).extra_ids == 0
  with pytest.raises(ValueError, match=r"has 0 sentinel ids but data.extra_ids is 10; set "
                     r"--config.data.extra_ids=0"):
    entry.run_vocab(_cfg(str(tmp_path / "tokenizer.json")), extra_ids=10)


def test_tokenizer_larger_than_the_embedding_table_is_a_clear_error(tmp_path):
  cfg = _cfg(train_tiny_vocab(str(tmp_path)))
  cfg.model.vocab_size = 256
  with pytest.raises(ValueError, match="has 350 ids but model.vocab_size is 256"):
    entry.run_vocab(cfg)
