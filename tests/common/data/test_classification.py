"""Classification data: CSV/JSONL/TFDS sources with field names from config, label sets, pair
formatting, evaluation batches covering every example once, and the errors users see."""
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from common.data import classification as cd
from common.tokenizer import train_sentencepiece
from common.vocab import SentencePieceVocab

WORDS = "good bad fine awful great movie plot actor scene boring superb dull".split()


@pytest.fixture(scope="module")
def vocab(tmp_path_factory):
  rng = np.random.default_rng(0)
  syllables = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "de", "gu", "fa", "zo"]
  words = WORDS + ["".join(rng.choice(syllables, rng.integers(1, 4))) for _ in range(200)]
  texts = [" ".join(rng.choice(words, 8)) for _ in range(400)]
  path = tmp_path_factory.mktemp("sp") / "sp.model"
  return SentencePieceVocab(train_sentencepiece(texts, str(path), vocab_size=300))


def test_format_pair_truncates_the_longer_text_first():
  tokens, types = cd.format_pair([10, 11, 12, 13, 14, 15], [20, 21], max_len=8, cls_id=4,
                                 sep_id=5)
  np.testing.assert_array_equal(tokens, [4, 10, 11, 12, 5, 20, 21, 5])
  np.testing.assert_array_equal(types, [0, 0, 0, 0, 0, 1, 1, 1])
  tokens, types = cd.format_pair([10, 11, 12], None, max_len=4, cls_id=4, sep_id=5)
  np.testing.assert_array_equal(tokens, [4, 10, 11, 5])
  assert not types.any()


def test_label_map():
  labels = cd.LabelMap.parse("negative, positive")
  assert labels.index("positive") == 1 and len(labels) == 2
  assert cd.LabelMap.infer([10, 2, 2, 1]).names == ("1", "2", "10")  # numeric order
  assert cd.LabelMap.infer([1, 0]).index(np.int64(1)) == 1  # JSON, CSV and TFDS labels agree
  assert cd.LabelMap.infer(["1", "0"]).index(1) == 1
  with pytest.raises(ValueError, match=r"label 'neutral' is not in the label set "
                                       r"\['negative', 'positive'\]"):
    labels.index("neutral")
  with pytest.raises(ValueError, match="at least 2 labels"):
    cd.LabelMap(["only"])
  with pytest.raises(ValueError, match=r"split 'test' example 1: label '7' is not in"):
    cd.check_labels(["positive", 7], labels, "split 'test'")
  with pytest.raises(ValueError, match="regression target 'x' is not a finite number"):
    cd.check_labels([1.5, "x"], None, "train")


def test_csv_source_and_errors(tmp_path):
  (tmp_path / "train.csv").write_text('text,label\n"good, really",pos\nawful,neg\n')
  (tmp_path / "validation.csv").write_text("text,label\n")
  (tmp_path / "bad.csv").write_text("text,label\nx,pos,extra\n")
  src = cd.open_examples(f"csv:{tmp_path}/{{split}}.csv", "train", "/unused")
  assert len(src) == 2 and src[0] == {"text": "good, really", "label": "pos"}
  with pytest.raises(ValueError, match=r"split 'validation' has no examples"):
    cd.open_examples(f"csv:{tmp_path}/{{split}}.csv", "validation", "/unused")
  with pytest.raises(FileNotFoundError, match="no files match"):
    cd.open_examples(f"csv:{tmp_path}/{{split}}.csv", "test", "/unused")
  with pytest.raises(ValueError, match=r"bad.csv:2: expected 2 columns"):
    cd.open_examples(f"csv:{tmp_path}/bad.csv", "train", "/unused")
  with pytest.raises(ValueError, match=r"no field 'sentence' \(text_field\); fields present: "
                                       r"\['label', 'text'\]"):
    cd.Fields(text="sentence", label="label").check(src[0], "csv")


def test_eval_batches_cover_every_example_once(tmp_path, vocab):
  rows = [{"q": f"good movie {i}", "a": "bad plot " * (i % 7), "y": ["no", "yes"][i % 2]}
          for i in range(10)]
  (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  src = cd.open_examples(f"jsonl:{tmp_path}/d.jsonl", "validation", "/unused")
  fields = cd.Fields(text="q", text_pair="a", label="y")
  labels = cd.LabelMap.parse("no,yes")
  batches = list(cd.classification_dataset(src, vocab, fields=fields, labels=labels, seq_len=16,
                                           batch_size=4, seed=0, train=False))
  assert len(batches) == cd.num_batches(10, 4) == 3
  w = np.concatenate([b["weights"][:, 0] for b in batches])
  np.testing.assert_array_equal(w, [1] * 10 + [0] * 2)
  y = np.concatenate([b["labels"][:, 0] for b in batches])[:10]
  np.testing.assert_array_equal(y, [i % 2 for i in range(10)])
  b = batches[0]
  assert b["tokens"].shape == (4, 16) and b["labels"].shape == (4, 1)
  row = b["tokens"][3]  # pair: [CLS] q [SEP] a [SEP], type 1 on the second part
  seps = np.flatnonzero(row == vocab.sep_id)
  assert row[0] == vocab.cls_id and len(seps) == 2
  assert (b["type_ids"][3][seps[0] + 1:seps[1] + 1] == 1).all()
  assert (b["segment_ids"][3] == (np.arange(16) <= seps[1])).all()
  train = iter(cd.classification_dataset(src, vocab, fields=fields, labels=None, seq_len=16,
                                         batch_size=4, seed=0, train=True))
  with pytest.raises(ValueError):  # 'yes' is not a regression target
    next(train)


def test_catalog_datasets_by_name(tmp_path, vocab):
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    for spec, field in (("tfds:glue/sst2", "sentence"), ("tfds:imdb_reviews", "text")):
      src = cd.open_examples(spec, "train", str(tmp_path))
      fields = cd.Fields(text=field, label="label")
      fields.check(src[0], spec)
      labels = cd.LabelMap.infer(cd.read_column(src, "label", spec))
      batch = next(iter(cd.classification_dataset(src, vocab, fields=fields, labels=labels,
                                                  seq_len=16, batch_size=2, seed=0,
                                                  train=True)))
      assert batch["tokens"].shape == (2, 16) and (batch["tokens"][:, 0] == vocab.cls_id).all()
