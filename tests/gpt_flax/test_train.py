"""End to end on tiny configs: real tokenizer + grain pipeline + trainer + sampling, and the
bad-input errors of the command line."""

import json
import os
import subprocess
import sys

import pytest

from common import config as config_lib
from configs.gpt import get_config
from gpt_flax import train
from tests import fakes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """A tiny generated JSONL corpus (train/validation) and a SentencePiece model trained on it."""
  root = tmp_path_factory.mktemp("corpus")
  return root, fakes.word_corpus(root, (("train", 400), ("validation", 60)))


def _cfg(corpus):
  root, model = corpus
  cfg = get_config("tiny")
  cfg.data.update(dataset=f"jsonl:{root}/{{split}}.jsonl", tokenizer=model, text_field="body",
                  data_dir=str(root))
  return cfg


def test_pretrain_end_to_end(corpus, tmp_path, capsys):
  cfg = _cfg(corpus)
  result = train.run(cfg, str(tmp_path))
  out = capsys.readouterr().out
  assert "validation (validation): loss" in out and out.count("sample | ") == 3
  assert result.eval_metrics["perplexity"] > 1
  # The work dir is self-describing: resolved config, tokenizer, checkpoints, metrics, events.
  saved = json.load(open(tmp_path / "config.json"))
  assert saved["data"]["text_field"] == "body"
  assert os.path.exists(tmp_path / "vocab" / "sp.model")
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "6"]
  assert os.path.exists(tmp_path / "metrics.jsonl")


def test_missing_dataset(corpus, tmp_path):
  cfg = _cfg(corpus)
  cfg.data.dataset = "debian"
  cfg.data.data_dir = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="dataset 'debian' is not prepared"):
    train.run(cfg, str(tmp_path / "wd"))
  assert not os.path.exists(tmp_path / "wd" / "checkpoints")


def test_missing_tokenizer(corpus, tmp_path):
  cfg = _cfg(corpus)
  cfg.data.tokenizer = str(tmp_path / "none.model")
  with pytest.raises(FileNotFoundError, match="no tokenizer for dataset .* at .*none.model"):
    train.run(cfg, str(tmp_path / "wd"))


def test_tokenizer_larger_than_embedding(corpus, tmp_path):
  cfg = _cfg(corpus)
  cfg.model.vocab_size = 256
  with pytest.raises(ValueError, match="raise model.vocab_size"):
    train.run(cfg, str(tmp_path / "wd"))


def test_unknown_config_key_is_one_clear_line():
  with pytest.raises(ValueError, match="unknown config key 'model.d_modle'.*valid keys there: "
                                       ".*d_model"):
    config_lib.apply_overrides(get_config("tiny"), {"model.d_modle": 3})


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "gpt_flax.train", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, PYTHONPATH=ROOT))


def test_cli_bad_input(tmp_path):
  bad_key = _cli("--config=configs/gpt.py:tiny", "--config.train.batchsize=4",
                 f"--workdir={tmp_path}")
  assert bad_key.returncode == 2
  last = bad_key.stderr.strip().splitlines()[-1]
  assert last.startswith("error: unknown config key 'train.batchsize': train has no field "
                         "'batchsize'; valid keys there: ")
  assert "batch_size" in last and "num_steps" in last
  bad_preset = _cli("--config=configs/gpt.py:huge", f"--workdir={tmp_path}")
  assert bad_preset.returncode == 2 and "unknown gpt preset 'huge'" in bad_preset.stderr
  missing = _cli("--config=configs/gpt.py:tiny", f"--workdir={tmp_path}",
                 f"--config.data.data_dir={tmp_path}/none")
  assert missing.returncode == 2
  assert "error: dataset 'debian' is not prepared" in missing.stderr
  assert not os.path.exists(tmp_path / "checkpoints")
