"""Pretraining transfers: a fine-tuning run starts from the pretrained weights (its encoder
computes, at step 0, exactly what the pretraining checkpoint computes), and the learning-curve
grid (`common.transfer`) runs, skips finished cells, and writes its CSV, table and plot."""

import csv
import dataclasses
import functools
import json
import os
import random
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bert_flax import train as bert_train
from bert_flax import transfer as bert_transfer
from bert_flax.model import BertPretrainModel
from common import train_state, trainer, transfer
from common.rundir import RunDir
from configs.bert import get_config as bert_config
from configs.t5 import get_config as t5_config
from t5x_lite import infer
from t5x_lite import transfer as t5_transfer
from t5x_lite import train as t5_train
from tests import fakes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """Made-up text: a pretraining corpus (body, title = its first words), labelled sentences
  (sentence, y) and a SentencePiece model."""
  root = tmp_path_factory.mktemp("transfer")
  rng = random.Random(0)
  words = fakes.made_up_words(rng, 200, max_syllables=3)
  sentence = lambda: " ".join(rng.choice(words) for _ in range(rng.randint(3, 10))) + "."
  splits = {}
  for split, n in (("train", 200), ("validation", 24), ("test", 24)):
    bodies = [" ".join(sentence() for _ in range(rng.randint(1, 4))) for _ in range(n)]
    splits[split] = [{"body": b, "title": " ".join(b.split()[:3])} for b in bodies]
  for split, n in (("train", 64), ("validation", 16), ("test", 16)):
    fakes.write_jsonl(root / f"cls_{split}.jsonl",
                      [{"sentence": s, "y": "pos" if "ka" in s else "neg"}
                       for s in (sentence() for _ in range(n))])
  return root, fakes.write_corpus(root, splits)


def _bert_cfg(corpus):
  root, sp = corpus
  cfg = bert_config("tiny")
  cfg.data.update(dataset=f"jsonl:{root}/{{split}}.jsonl", tokenizer=sp, text_field="body",
                  data_dir=str(root))
  cfg.classify.update(dataset=f"jsonl:{root}/cls_{{split}}.jsonl", text_field="sentence",
                      label_field="y", batch_size=16)
  # One checkpoint; every cell 4 steps (16 labels 4 times, all 64 once): one compilation.
  cfg.train.checkpoint_every = 6
  cfg.transfer.update(min_steps=4, max_steps=4)
  return cfg


def _t5_cfg(corpus):
  root, sp = corpus
  cfg = t5_config("tiny")
  cfg.data.update(dataset=f"jsonl:{root}/{{split}}.jsonl", tokenizer=sp, text_field="body",
                  data_dir=str(root), input_field="body", target_field="title",
                  max_input_len=48, max_target_len=12, truncate_targets=True)
  cfg.train.checkpoint_every = 6
  return cfg


class _StepZero(Exception):
  """Raised by the spy once it has the state the first training step receives."""


def _step_zero(monkeypatch, run, cfg, workdir):
  """(setup, params) that fine-tuning's first train step receives, through the trainer."""
  seen = {}

  def spy(setup):
    def first_step(state, batch):
      seen.update(setup=setup, params=jax.device_get(state["params"]))
      raise _StepZero
    return first_step

  monkeypatch.setattr(trainer, "make_train_step", spy)
  with pytest.raises(_StepZero):
    run(cfg, str(workdir))
  return seen["setup"], seen["params"]


def _differs(a, b):
  return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


@pytest.fixture(scope="module")
def bert_grid(corpus, tmp_path_factory):
  """The BERT grid on the tiny preset (labels: 16 and all 64; one seed), its fine-tuning runs
  counted; it pretrains into OUT/pretrain, which the step-0 test below starts from."""
  out = tmp_path_factory.mktemp("bert_grid")
  calls = []

  def counted(*args):
    calls.append(args[-1])
    return bert_transfer.finetune(*args)

  family = dataclasses.replace(bert_transfer.FAMILY, finetune=counted)
  return out, family, calls, transfer.run_grid(family, _bert_cfg(corpus), str(out))


@pytest.fixture(scope="module")
def t5_grid(corpus, tmp_path_factory):
  out = tmp_path_factory.mktemp("t5_grid")
  cfg = _t5_cfg(corpus)
  cfg.transfer.budgets = "16"
  return out, transfer.run_grid(t5_transfer.FAMILY, cfg, str(out))


def test_bert_finetuning_starts_from_the_pretrained_encoder(corpus, bert_grid, tmp_path,
                                                            monkeypatch):
  pre = bert_grid[0] / "pretrain"
  cfg = _bert_cfg(corpus)
  cfg.task, cfg.seed = "classify", 1  # a fresh init unlike the pretraining's (seed 0)
  cfg.data.dataset = cfg.classify.dataset
  cfg.finetune.init_from = str(pre)
  setup, params = _step_zero(monkeypatch, bert_train.run, cfg, tmp_path)
  loaded = RunDir(str(pre)).load(lambda c, _: BertPretrainModel(c))
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(7, 400, (4, 16)), jnp.int32)
  inputs = dict(type_ids_BxL=jnp.zeros_like(tokens), segment_ids_BxL=jnp.ones_like(tokens),
                positions_BxL=jnp.broadcast_to(jnp.arange(16), tokens.shape))
  encode = lambda s, p: jax.jit(lambda q: s.merge(q)(tokens, **inputs))(p)
  at_step0 = encode(setup, params)
  np.testing.assert_allclose(at_step0, encode(loaded.setup, loaded.params), atol=1e-6)
  # The comparison tells loaded from fresh weights: this run's own init computes otherwise.
  assert _differs(at_step0, encode(setup, train_state.init_state(setup)["params"])) > 0.1


def test_t5_finetuning_starts_from_the_pretrained_weights(corpus, t5_grid, tmp_path,
                                                          monkeypatch):
  pre = t5_grid[0] / "pretrain"
  cfg = _t5_cfg(corpus)
  cfg.task, cfg.seed = "summarize", 1
  cfg.finetune.init_from = str(pre)
  cfg.rouge.num_examples = 0
  setup, params = _step_zero(monkeypatch, t5_train.run, cfg, tmp_path)
  loaded = infer.load_run(str(pre))
  rng = np.random.default_rng(0)
  enc, dec = (jnp.asarray(rng.integers(3, 400, (4, n)), jnp.int32) for n in (20, 8))
  ones = lambda x: jnp.ones_like(x)

  @functools.partial(jax.jit, static_argnums=0)
  def run(graphdef, p):
    net = nnx.merge(graphdef, p)
    return (net.encode(enc, ones(enc)),
            net(enc, dec, encoder_segment_ids_BxS=ones(enc), decoder_segment_ids_BxT=ones(dec)))

  (enc0, logits0) = run(setup.graphdef, params)
  enc_pre, logits_pre = run(loaded.setup.graphdef, loaded.params)
  np.testing.assert_allclose(enc0, enc_pre, atol=1e-6)
  np.testing.assert_allclose(logits0, logits_pre, atol=1e-5)  # the decoder transfers too
  assert _differs(enc0, run(setup.graphdef, train_state.init_state(setup)["params"])[0]) > 0.1


def test_bert_grid_runs_skips_finished_cells_and_plots(corpus, bert_grid, capsys):
  out, family, calls, rows = bert_grid
  assert [(r["init"], r["budget"], r["seed"]) for r in rows] == [
      ("pretrained", 16, 0), ("random", 16, 0), ("pretrained", 64, 0), ("random", 64, 0)]
  assert len(calls) == 4 and all(0 <= r["test_accuracy"] <= 1 for r in rows)
  # Adaptive pretraining: 2 MLM steps from OUT/pretrain on the 64 training sentences' text
  # (labels left out); the pretrained cells start there, the random ones from nothing.
  adapt = RunDir(str(out / "adapt"))
  assert adapt.latest_step() == 2 and adapt.config().finetune.init_from == str(out / "pretrain")
  texts = [json.loads(l) for l in open(out / "data" / "adapt" / "train.jsonl")]
  assert len(texts) == 64 and all(list(t) == ["text"] and t["text"].endswith(".") for t in texts)
  inits = {c: RunDir(str(out / "cells" / c)).config().finetune.init_from
           for c in ("pretrained_n16_s0", "random_n16_s0")}
  assert inits == {"pretrained_n16_s0": str(out / "adapt"), "random_n16_s0": ""}
  # 16 labels: 4 steps of 16 = the subset 4 times, in one epoch; all 64 labels once.
  assert [r["steps"] for r in rows] == [4, 4, 4, 4]
  sub16 = open(out / "data" / "n16_s0" / "train.jsonl").read().splitlines()
  sub64 = open(out / "data" / "n64_s0" / "train.jsonl").read().splitlines()
  assert len(sub16) == 64 and sub16[:16] == sub16[48:] and set(sub16) <= set(sub64)
  assert len(sub64) == len(set(sub64)) == 64
  with open(out / "transfer.csv") as f:
    table = list(csv.DictReader(f))
  assert len(table) == 4 and float(table[0]["test_accuracy"]) == rows[0]["test_accuracy"]
  with open(out / "transfer.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert "| 16 |" in open(out / "table.md").read()
  # A rerun trains nothing: the pretraining and every cell are reused; outputs are rewritten.
  os.remove(out / "transfer.png")
  again = transfer.run_grid(family, _bert_cfg(corpus), str(out))
  assert len(calls) == 4 and again == rows
  assert os.path.getsize(out / "transfer.png") > 0
  printed = capsys.readouterr().out
  assert printed.count("(done before)") == 4 and "training bert" not in printed
  assert "majority class" in printed
  # A rerun for one budget trains nothing and still reports every finished cell.
  one = _bert_cfg(corpus)
  one.transfer.budgets = "16"
  assert [r["budget"] for r in transfer.run_grid(family, one, str(out))] == [16, 16]
  with open(out / "transfer.csv") as f:
    assert [(r["init"], int(r["budget"])) for r in csv.DictReader(f)] == [
        (r["init"], r["budget"]) for r in rows]
  # Another recipe in the same directory would mix cells: refused.
  other = _bert_cfg(corpus)
  other.finetune.learning_rate = 0.5
  with pytest.raises(ValueError, match="finetune.learning_rate differ"):
    transfer.run_grid(family, other, str(out))


def test_t5_grid_decodes_the_test_inputs(t5_grid):
  out, rows = t5_grid
  assert [(r["init"], r["steps"]) for r in rows] == [("pretrained", 4), ("random", 4)]
  for r in rows:
    assert 0 <= r["test_rougeL"] <= 100 and 0 < r["distinct_outputs"] <= 1
  assert "first 3 words of the input" in open(out / "table.md").read()


def test_finetuning_steps_per_budget():
  t = bert_config("demo").transfer.copy_and_resolve_references()
  t.update(epochs=3, min_steps=150, max_steps=760)
  assert [transfer.finetune_steps(t, n, 32) for n in (100, 3000, 8102)] == [150, 282, 760]
  assert transfer.parse_budgets("300,all,100", 8102) == [100, 300, 8102]
  with pytest.raises(ValueError, match="'0' is not a label count in 1..8102"):
    transfer.parse_budgets("0,100", 8102)
  t.min_steps = 0
  with pytest.raises(ValueError, match="min_steps=0"):
    transfer.finetune_steps(t, 100, 32)


def test_bad_input_is_one_error_line(tmp_path):
  done = subprocess.run([sys.executable, "-m", "bert_flax.transfer", f"--out={tmp_path}",
                         "--config.transfer.seeds=a"], cwd=ROOT, capture_output=True, text=True,
                        timeout=120, env=dict(os.environ, PYTHONPATH=ROOT))
  errors = [l for l in done.stderr.splitlines() if l.startswith("error:")]
  assert done.returncode == 2 and len(errors) == 1 and "Traceback" not in done.stderr
  assert "transfer.seeds='a' must be a comma-separated list" in errors[0]
