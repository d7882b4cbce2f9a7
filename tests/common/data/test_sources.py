"""Dataset specs -> random-access sources, and the errors users see when a spec is wrong."""
import json

import pytest
import tensorflow_datasets as tfds

from common.data import sources
from common.data.records import get_text
from common.data.seq2seq import field_text
from configs.t5 import get_config
from t5x_lite import tasks


def _write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_jsonl_split_placeholder(tmp_path):
  _write_jsonl(tmp_path / "train.jsonl", [{"text": f"doc {i}", "n": i} for i in range(5)])
  _write_jsonl(tmp_path / "validation.jsonl", [{"text": "held out"}])
  spec = f"jsonl:{tmp_path}/{{split}}.jsonl"
  train = sources.open_source(spec, "train", "/unused")
  assert len(train) == 5 and train[3] == {"text": "doc 3", "n": 3}
  assert sources.open_source(spec, "validation", "/unused")[0]["text"] == "held out"
  with pytest.raises(ValueError, match=r"unknown split 'test'.*\['train', 'validation'\]"):
    sources.open_source(spec, "test", "/unused")


def test_a_split_carved_from_another_by_position(tmp_path):
  _write_jsonl(tmp_path / "train.jsonl", [{"text": f"doc {i}"} for i in range(10)])
  spec = f"jsonl:{tmp_path}/{{split}}.jsonl"
  texts = lambda split: [x["text"] for x in sources.open_source(spec, split, "/unused")]
  head, tail = texts("train[:90%]"), texts("train[90%:]")
  assert head == [f"doc {i}" for i in range(9)] and tail == ["doc 9"]
  assert texts("train[-3:]") == ["doc 7", "doc 8", "doc 9"] and texts("train[2:4]") == [
      "doc 2", "doc 3"]
  assert sources.split_range("train[:90%]", 10) == (0, 9)
  with pytest.raises(ValueError, match=r"split 'train\[5\]': expected NAME or NAME\[START:STOP\]"):
    sources.open_source(spec, "train[5]", "/unused")
  with pytest.raises(ValueError, match=r"'train\[:0\]' selects no examples of the 10"):
    sources.open_source(spec, "train[:0]", "/unused")
  with pytest.raises(ValueError, match=r"unknown split 'dev'.*\['train'\]"):
    sources.open_source(spec, "dev[:50%]", "/unused")


def test_jsonl_glob_without_placeholder_is_same_for_every_split(tmp_path):
  _write_jsonl(tmp_path / "part-1.jsonl", [{"text": "b"}])
  _write_jsonl(tmp_path / "part-0.jsonl", [{"text": "a"}])
  (tmp_path / "part-2.jsonl").write_text('\n{"text": "c"}\n\n')  # blank lines are skipped
  spec = f"jsonl:{tmp_path}/part-*.jsonl"
  for split in ("train", "test"):
    src = sources.open_source(spec, split, "/unused")
    assert [src[i]["text"] for i in range(len(src))] == ["a", "b", "c"]  # sorted file order


def test_bad_lines_name_file_and_line_when_opened_or_are_skipped_and_counted(tmp_path):
  (tmp_path / "d.jsonl").write_bytes(b'{"text": "ok"}\n{not json}\n[1, 2]\n{"text": "\xff"}\n'
                                     b'{"text": "fine"}\n')
  spec = f"jsonl:{tmp_path}/d.jsonl"
  with pytest.raises(ValueError, match=r"d.jsonl:2: invalid JSON .*skip_bad_records=True"):
    sources.open_source(spec, "train", "/unused")
  src = sources.open_source(spec, "train", "/unused", skip_bad_records=True)
  assert [src[i]["text"] for i in range(len(src))] == ["ok", "fine"]
  assert src.skipped == 3 and src.first_skipped.endswith("d.jsonl:2: invalid JSON "
                                                         "(Expecting property name enclosed "
                                                         "in double quotes, column 2)")
  (tmp_path / "t.txt").write_bytes(b"good line\n\xfe\xff bad\n")
  with pytest.raises(ValueError, match=r"t.txt:2: not UTF-8 text"):
    sources.open_source(f"text:{tmp_path}/t.txt", "train", "/unused")
  with pytest.raises(ValueError, match=r"expected a JSON object, got list"):
    (tmp_path / "l.jsonl").write_text("[1, 2]\n")
    sources.open_source(f"jsonl:{tmp_path}/l.jsonl", "train", "/unused")


def test_text_spec_one_document_per_nonempty_line(tmp_path):
  (tmp_path / "train.txt").write_text("first doc\n\n  \nsecond doc\r\n")
  src = sources.open_source(f"text:{tmp_path}/{{split}}.txt", "train", "/unused")
  assert [src[i] for i in range(len(src))] == [{"text": "first doc"}, {"text": "second doc"}]


def test_missing_files_and_unknown_prefix(tmp_path):
  with pytest.raises(FileNotFoundError, match="no files match"):
    sources.open_source(f"jsonl:{tmp_path}/nothing-*.jsonl", "train", "/unused")
  with pytest.raises(ValueError, match=r"unknown dataset spec 'csv:x'.*jsonl:PATH_OR_GLOB"):
    sources.open_source("csv:x", "train", "/unused")


def test_debian_not_prepared_says_how_to_prepare(tmp_path):
  with pytest.raises(FileNotFoundError, match=(
          f"dataset 'debian' is not prepared in {tmp_path}; run: python -m common.data.prepare "
          f"--dataset=debian --data_dir={tmp_path}")):
    sources.open_source("debian", "train", str(tmp_path))


def test_get_text_errors_name_the_fields_and_the_flag():
  assert get_text({"text": "hi"}, "text") == "hi"
  assert get_text({"text": b"hi"}, "text") == "hi"
  with pytest.raises(ValueError, match=r"no text field 'body'; fields present: "
                                       r"\['label', 'text'\]; set --config.data.text_field"):
    get_text({"text": "x", "label": 1}, "body")
  with pytest.raises(ValueError, match=r"field 'label' holds int, not text"):
    get_text({"text": "x", "label": 1}, "label")


def test_tfds_catalog_through_mock_data(tmp_path):
  with tfds.testing.mock_data(num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE):
    imdb = sources.open_source("tfds:imdb_reviews", "train", str(tmp_path))
    assert len(imdb) == 6 and isinstance(get_text(imdb[0], "text"), str)
    cnn = sources.open_source("tfds:cnn_dailymail", "validation", str(tmp_path))
    assert {"article", "highlights"} <= set(cnn[0])
    assert all(isinstance(cnn[0][k], str) for k in ("article", "highlights"))
    xsum = sources.open_source("tfds:xsum", "validation", str(tmp_path))
    assert len(xsum) == 6 and {"document", "summary"} <= set(xsum[0])
    # T5 fine-tuning finds both summarisation datasets' fields without flags.
    d = get_config("tiny").data
    for spec, ds, want in (("tfds:xsum", xsum, ("document", "summary")),
                           ("tfds:cnn_dailymail", cnn, ("article", "highlights"))):
      d.update(dataset=spec, input_field="", target_field="")
      assert tasks.fields(d) == want
      tasks.check_fields(ds[0], d)
      assert all(isinstance(field_text(ds[0], f, "input"), str) for f in want)


def test_tfds_errors(tmp_path):
  with pytest.raises(ValueError, match="unknown TFDS dataset 'no_such_dataset_xyz'"):
    sources.open_source("tfds:no_such_dataset_xyz", "train", str(tmp_path))
  with pytest.raises(FileNotFoundError, match="'tfds:imdb_reviews' is not prepared.*array_rec"):
    sources.open_source("tfds:imdb_reviews", "train", str(tmp_path))
