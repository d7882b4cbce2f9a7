"""End to end on tiny configs: pretrain (span corruption) -> checkpoint -> fine-tune via
command-line flags -> inference (library and the infer/rouge CLIs), the fine-tuning schedule
defaults, and the bad-input errors."""

import json
import os
import random
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from common import config as config_lib
from common.checkpoint import Checkpointer
from common.config import apply_overrides
from configs.t5 import get_config
from t5x_lite import infer, train
from t5x_lite.decode import predict_ids
from tests import fakes
from tests.fakes import SyntheticLM

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """JSONL splits of {"body", "title"} (title = the body's first words) and a tokenizer."""
  root = tmp_path_factory.mktemp("t5corpus")
  rng = random.Random(0)
  words = fakes.made_up_words(rng, 200, max_syllables=3)
  splits = {}
  for split, n in (("train", 300), ("validation", 40)):
    bodies = [[rng.choice(words) for _ in range(rng.randint(6, 30))] for _ in range(n)]
    splits[split] = [{"body": " ".join(b), "title": " ".join(b[:3])} for b in bodies]
  return root, fakes.write_corpus(root, splits)


def _cfg(corpus, **data):
  root, model = corpus
  cfg = get_config("tiny")
  # Inputs 48 -> span-corruption targets 12: fine-tuning with the same lengths reuses the
  # compiled train/eval steps (persistent compilation cache) in its subprocess.
  cfg.data.update(dict(dataset=f"jsonl:{root}/{{split}}.jsonl", tokenizer=model,
                       text_field="body", data_dir=str(root), max_input_len=48,
                       max_target_len=12) | data)
  return cfg


@pytest.fixture(scope="module")
def pretrained(corpus, tmp_path_factory):
  wd = tmp_path_factory.mktemp("pre")
  result = train.run(_cfg(corpus), str(wd))
  return wd, result


def test_pretrain_writes_a_self_describing_workdir(pretrained):
  wd, result = pretrained
  assert sorted(os.listdir(wd / "checkpoints")) == ["3", "6"]
  assert json.load(open(wd / "config.json"))["task"] == "pretrain"
  assert os.path.exists(wd / "vocab" / "sp.model")
  assert json.load(open(wd / "vocab" / "sp.json"))["extra_ids"] == 100
  assert np.isfinite(result.eval_metrics["loss"])


def test_finetune_via_flags_then_infer(corpus, pretrained, tmp_path):
  root, model = corpus
  pre_wd, _ = pretrained
  wd = tmp_path / "ft"
  done = subprocess.run(
      [sys.executable, "-m", "t5x_lite.train", "--config=configs/t5.py:tiny",
       "--config.task=summarize", f"--config.finetune.init_from={pre_wd}", f"--workdir={wd}",
       f"--config.data.dataset=jsonl:{root}/{{split}}.jsonl", f"--config.data.data_dir={root}",
       f"--config.data.tokenizer={model}", "--config.data.input_field=body",
       "--config.data.target_field=title", "--config.data.prefix=title: ",
       "--config.data.max_input_len=48", "--config.data.max_target_len=12",
       "--config.data.truncate_targets=True",
       "--config.train.num_steps=8", "--config.train.eval_every=8",
       "--config.train.checkpoint_every=8", "--config.finetune.learning_rate=0.002"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
  assert done.returncode == 0, done.stderr[-3000:]
  assert "ROUGE on 8 validation examples" in done.stdout
  steps = [json.loads(l)["step"] for l in open(wd / "metrics.jsonl") if "train/loss" in l]
  assert steps == [2, 4, 6, 8]  # fine-tuning counts its own steps from 0 (logged every 2)
  # T5's fine-tuning schedule, but the learning rate given by flag.
  opt = json.load(open(wd / "config.json"))["optimizer"]
  assert (opt["schedule"], opt["learning_rate"], opt["warmup_steps"]) == ("constant", 0.002, 0)
  run = infer.load_run(str(wd))
  cfg, vocab, graphdef, params, partitioner = (run.cfg, run.vocab, run.setup.graphdef,
                                               run.params, run.setup.partitioner)
  assert cfg.data.prefix == "title: "
  texts, ids, targets = infer.read_inputs(cfg, vocab, "split:validation", 5)
  assert len(ids) == 5 and targets[0] == " ".join(texts[0].split()[:3])
  # The ROUGE evaluation's shapes (8 rows, 8 new tokens): greedy reuses its compilation.
  kw = dict(input_len=48, max_decode_len=8, batch_size=8, eos_id=vocab.eos_id,
            vocab_size=vocab.vocab_size, partitioner=partitioner)
  beam = predict_ids(graphdef, params, ids, beam_size=3, **kw)
  greedy = predict_ids(graphdef, params, ids, **kw)
  sampled = predict_ids(graphdef, params, ids, temperature=1.0, top_k=20, seed=1, **kw)
  for outs in (beam, greedy, sampled):
    assert len(outs) == 5 and all(len(o) <= 8 for o in outs)
    assert all(t < vocab.vocab_size for o in outs for t in o)
  # The inference CLI (greedy, the shapes above) writes JSONL; the ROUGE CLI re-scores it.
  out = tmp_path / "preds" / "out.jsonl"
  env = dict(os.environ, PYTHONPATH=ROOT)
  done = subprocess.run(
      [sys.executable, "-m", "t5x_lite.infer", f"--workdir={wd}", "--input=split:validation",
       f"--output={out}", "--num_examples=5", "--beam_size=1", "--max_decode_len=8",
       "--batch_size=8"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  rows = [json.loads(l) for l in open(out)]
  assert [r["input"] for r in rows] == texts and [r["target"] for r in rows] == targets[:5]
  assert all(set(r) == {"input", "prediction", "target"} and isinstance(r["prediction"], str)
             for r in rows)
  assert [r["prediction"] for r in rows] == [vocab.decode(o) for o in greedy]
  printed = json.loads(done.stdout.strip().splitlines()[-1])
  assert set(printed) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
  assert all(0 <= v <= 100 for v in printed.values())
  done = subprocess.run([sys.executable, "-m", "common.rouge", f"--predictions={out}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  assert json.loads(done.stdout.strip().splitlines()[-1]) == printed


@pytest.mark.parametrize("preset", ["tiny", "demo", "base"])
def test_finetuning_trains_with_the_finetune_schedule(preset):
  schedule = lambda c: (c.optimizer.schedule, c.optimizer.learning_rate, c.optimizer.warmup_steps,
                        c.model.dropout_rate)
  resolved = lambda **o: schedule(config_lib.resolve_finetune(
      apply_overrides(get_config(preset), o)))
  pretrain = schedule(get_config(preset))
  # T5.1.1 pretrains without dropout and fine-tunes with 0.1 (T5X's fine-tuning runs).
  assert pretrain[0] == "rsqrt" and pretrain[3] == 0.0 and resolved() == pretrain
  lr = 3e-3 if preset == "demo" else 1e-3  # T5's 1e-3; the 4-layer demo model needs more
  assert resolved(task="summarize") == ("constant", lr, 0, 0.1)
  assert resolved(**{"task": "summarize", "finetune.learning_rate": 5e-4,
                     "finetune.dropout_rate": 0.0}) == ("constant", 5e-4, 0, 0.0)
  assert resolved(**{"task": "summarize", "finetune.schedule": "linear",
                     "finetune.warmup_ratio": 0.1, "train.num_steps": 70}) == (
      "linear", lr, 7, 0.1)
  # A flag that fine-tuning would ignore is refused before anything runs.
  for flag, instead in (("optimizer.learning_rate=0.01", "finetune.learning_rate"),
                        ("optimizer.warmup_steps=5", "finetune.warmup_ratio"),
                        ("model.dropout_rate=0.2", "finetune.dropout_rate")):
    argv = ["t5", f"--config=configs/t5.py:{preset}", "--config.task=summarize",
            f"--config.{flag}"]
    with pytest.raises(ValueError, match=f"set --config.{instead}$"):
      config_lib.check_overrides(argv, "")
  with pytest.raises(ValueError, match=r"finetune.dropout_rate=1.0 must be in \[0, 1\)"):
    config_lib.validate(apply_overrides(get_config(preset), {"finetune.dropout_rate": 1.0}))


def test_missing_field_names(corpus, tmp_path):
  with pytest.raises(ValueError, match="no known input/target fields.*data.input_field"):
    train.run(_summarize(corpus), str(tmp_path))
  with pytest.raises(ValueError, match="no input field 'text'.*'body'.*input_field"):
    train.run(_summarize(corpus, input_field="text", target_field="title"), str(tmp_path))


def _summarize(corpus, **data):
  cfg = _cfg(corpus, **data)
  cfg.task = "summarize"
  return cfg


def test_target_longer_than_allowed(corpus, tmp_path):
  cfg = _summarize(corpus, input_field="body", target_field="title", max_target_len=3)
  with pytest.raises(ValueError, match="target has .* tokens with EOS, more than "
                                       "data.max_target_len=3.*truncate_targets=True"):
    train.run(cfg, str(tmp_path))


def test_checkpoint_of_another_architecture(corpus, tmp_path):
  ckpt = Checkpointer(str(tmp_path / "gpt" / "checkpoints"), async_save=False)
  state = {"step": jnp.asarray(1, jnp.int32), "params": {"w": jnp.ones((2,))}, "opt_state": {}}
  ckpt.save(1, state, SyntheticLM(), {"family": "gpt", "model": {}})
  ckpt.close()
  cfg = _summarize(corpus, input_field="body", target_field="title")
  cfg.finetune.init_from = str(tmp_path / "gpt")
  with pytest.raises(ValueError, match="holds a 'gpt' model, not a T5 model"):
    train.run(cfg, str(tmp_path / "wd"))


def test_vocabulary_without_enough_sentinels(corpus, tmp_path):
  with pytest.raises(ValueError, match="needs 3 sentinels.*extra_ids=2"):  # 52 raw tokens
    train.run(_cfg(corpus, extra_ids=2), str(tmp_path))


def test_unknown_task(corpus, tmp_path):
  cfg = _cfg(corpus)
  cfg.task = "translate"
  with pytest.raises(ValueError, match="unknown task 'translate'; valid: \\['pretrain', "
                                       "'summarize'\\]"):
    train.run(cfg, str(tmp_path))
