"""End to end on tiny configs: pretrain -> checkpoint -> fine-tune with a fresh head, and the
bad-input errors of fine-tuning (each a clear error before anything is compiled)."""

import json
import os
import random
import subprocess
import sys

import jax
import numpy as np
import pytest

from bert_flax import train
from common import train_state
from common.checkpoint_reader import load_params
from common.tokenizer import train_sentencepiece
from configs.bert import get_config
from tests import fakes

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  """Generated corpus (JSONL), labelled sentences (JSONL) and a SentencePiece model."""
  root = tmp_path_factory.mktemp("bert")
  rng = random.Random(0)
  words = fakes.made_up_words(rng, 300)
  sentence = lambda: " ".join(rng.choice(words) for _ in range(rng.randint(3, 10))) + "."
  corpus = {split: [{"body": " ".join(sentence() for _ in range(rng.randint(1, 4)))}
                    for _ in range(n)] for split, n in (("train", 300), ("validation", 40))}
  for split, n in (("train", 64), ("validation", 20), ("test", 20)):
    fakes.write_jsonl(root / f"cls_{split}.jsonl",
                      [{"sentence": s, "y": "pos" if "ka" in s else "neg",
                        "score": float(s.count("ka"))}
                       for s in (sentence() for _ in range(n))])
  return root, fakes.write_corpus(root, corpus)


def _pretrain_cfg(data):
  root, sp = data
  cfg = get_config("tiny")
  cfg.data.update(dataset=f"jsonl:{root}/{{split}}.jsonl", tokenizer=sp, text_field="body",
                  data_dir=str(root))
  return cfg


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("pretrain")
  result = train.run(_pretrain_cfg(data), str(workdir))
  return workdir, result


def _finetune_cfg(data, init_from, **classify):
  root, _ = data
  cfg = get_config("tiny")
  cfg.task = "classify"
  cfg.data.data_dir = str(root)
  cfg.finetune.init_from = str(init_from)
  cfg.classify.update(dict(dataset=f"jsonl:{root}/cls_{{split}}.jsonl",
                           text_field="sentence", label_field="y") | classify)
  return cfg


def test_pretrain_then_finetune(data, pretrained, tmp_path, capsys):
  workdir, pre = pretrained
  assert pre.eval_metrics["mlm_loss"] > 0 and 0 <= pre.eval_metrics["correct"] <= 1
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  assert os.path.exists(workdir / "vocab" / "sp.model")
  assert 0.1 < pre.history[-1]["predicted"] < 0.2  # ~15 % of the real tokens are predicted
  ft_cfg = _finetune_cfg(data, workdir)
  ft_cfg.seed = 1  # another fresh init than the pretraining's (checked below)
  ft = train.run(ft_cfg, str(tmp_path))
  out = capsys.readouterr().out
  # The encoder comes from the checkpoint; the pooler (no NSP) and classifier are new.
  assert "new parameters: classifier/bias, classifier/kernel, pooler/bias, pooler/kernel" in out
  assert "epoch 1 | validation (validation): loss" in out and "test (test): loss" in out
  assert "f1 ('pos' positive) " in out  # the class F1 is of, by name
  assert " ex/s | " in out and " tok/s | " not in out  # a classifier's weights count examples
  assert ft.start_step == 0 and [h["step"] for h in ft.history] == list(range(1, 17))
  assert ft.state["params"]["classifier"]["kernel"].shape == (64, 2)
  # It started from the pretrained encoder, then trained: each of its randomly initialised
  # matrices is a few steps from the pretrained one and far from this run's own fresh init
  # (seed 1, not the pretraining's 0, so re-initialising could not pass for loading).
  abstract, shard = ft.setup.abstract_state["params"], ft.setup.state_shardings["params"]
  tuned, tuned_step, *_ = load_params(str(tmp_path), abstract, shard)
  loaded, pre_step, _, missing = load_params(str(workdir), abstract, shard, strict=False)
  assert (tuned_step, pre_step) == (16, 6) and missing == [
      "classifier/bias", "classifier/kernel", "pooler/bias", "pooler/kernel"]
  flat = lambda t: {jax.tree_util.keystr(k): np.asarray(v)
                    for k, v in jax.tree_util.tree_leaves_with_path(t) if v is not None}
  tuned, loaded, fresh = flat(tuned), flat(loaded), flat(train_state.init_state(ft.setup)["params"])
  matrices = [k for k in loaded if k.endswith(("['kernel']", "['embedding']"))]  # random init
  assert any("tokens" in k for k in matrices) and any("encoder" in k for k in matrices)
  for k in matrices:
    moved, from_fresh = (np.linalg.norm(tuned[k] - x) for x in (loaded[k], fresh[k]))
    assert 0 < moved < 0.25 * from_fresh, (k, moved, from_fresh)
  results = json.load(open(tmp_path / "results.json"))
  assert set(results["test"]) == {"loss", "accuracy", "f1"} and results["f1_positive_label"] == "pos"
  assert results["majority_label"] in ("pos", "neg") and "test" in results["majority_baseline"]
  assert json.load(open(tmp_path / "labels.json"))["labels"] == ["neg", "pos"]


def test_continued_pretraining_starts_from_init_from(data, pretrained, tmp_path, capsys):
  """Domain-adaptive pretraining: MLM on another corpus (the labelled sentences' text) from the
  pretraining checkpoint, not from a fresh init."""
  workdir, _ = pretrained
  root, _ = data
  cfg = get_config("tiny")
  cfg.seed = 1  # another fresh init than the pretraining's
  cfg.data.update(dataset=f"jsonl:{root}/cls_{{split}}.jsonl", text_field="sentence",
                  data_dir=str(root))
  cfg.finetune.init_from = str(workdir)
  cfg.train.num_steps = 2
  cfg.optimizer.update(learning_rate=1e-9, weight_decay=0.0)  # params move by ~1e-9
  run = train.run(cfg, str(tmp_path))
  assert f"initialised from {workdir}" in capsys.readouterr().out
  abstract, shard = run.setup.abstract_state["params"], run.setup.state_shardings["params"]
  loaded, step, *_ = load_params(str(workdir), abstract, shard)
  assert step == 6 and run.start_step == 0
  for (k, a), b in zip(jax.tree_util.tree_leaves_with_path(run.state["params"]),
                       jax.tree.leaves(loaded)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6,
                               err_msg=jax.tree_util.keystr(k))


def test_regression_head_on_a_validation_split_carved_from_train(data, pretrained, tmp_path):
  workdir, _ = pretrained
  cfg = _finetune_cfg(data, workdir, label_field="score", train_split="train[:75%]",
                      eval_split="train[75%:]")
  cfg.task = "regress"
  ft = train.run(cfg, str(tmp_path))
  assert ft.state["params"]["classifier"]["kernel"].shape == (64, 1)
  results = json.load(open(tmp_path / "results.json"))
  assert results["examples"] == {"train": 48, "validation": 16, "test": 20}  # 64 = 48 + 16
  assert len(ft.history) == 2 * 48 // 8  # epochs x the carved split's batches
  assert {"mse", "mae"} <= set(results["validation"]) and {"mse", "mae"} <= set(results["test"])
  assert all(np.isfinite(v) and v >= 0 for v in results["test"].values())
  assert "majority_baseline" not in results  # no classes in a regression


def test_bad_inputs_are_clear_errors(data, pretrained, tmp_path):
  root, _ = data
  workdir, _ = pretrained
  other = train_sentencepiece([f"zz{i} yy{i} qq" for i in range(500)], str(tmp_path / "o.model"),
                              vocab_size=300)
  cases = [
      (dict(), {"data.tokenizer": other}, ValueError,
       "is not the tokenizer .* was trained with"),
      (dict(labels="neg,neutral"), {}, ValueError,
       r"split 'train' example \d+: label 'pos' is not in the label set \['neg', 'neutral'\]"),
      (dict(text_field="review"), {}, ValueError,
       r"examples have no field 'review' \(text_field\); fields present: \['score', 'sentence', 'y'\]"),
      (dict(dataset=f"jsonl:{root}/empty_{{split}}.jsonl"), {}, ValueError, "no non-empty lines"),
      (dict(dataset=f"csv:{root}/{{split}}.csv"), {}, ValueError, "has no examples"),
      (dict(seq_len=999), {}, ValueError, "classify.seq_len=999 exceeds model.max_len"),
      (dict(), {"data.dataset": f"jsonl:{root}/{{split}}.jsonl"}, ValueError,
       r"task=classify reads its examples from classify.dataset .* pass "
       r"--config.classify.dataset=jsonl:"),
      (dict(eval_split="train[80%:]"), {}, ValueError,
       r"classify train split 'train' and validation split 'train\[80%:\]' share examples"),
      (dict(train_split="train[:60%]", eval_split="train[50%:]"), {}, ValueError,
       "share examples"),
  ]
  for split in ("train", "validation"):
    (root / f"empty_{split}.jsonl").write_text("\n")
    (root / f"{split}.csv").write_text("sentence,y\n")
  for classify, top, error, match in cases:
    cfg = _finetune_cfg(data, workdir, **classify)
    for k, v in top.items():
      cfg.data[k.split(".")[1]] = v
    with pytest.raises(error, match=match):
      train.run(cfg, str(tmp_path / "wd"))
  assert not os.path.exists(tmp_path / "wd")
  cfg = _finetune_cfg(data, workdir)
  cfg.model.d_model = 32
  with pytest.raises(ValueError, match="has a different architecture.*d_model"):
    train.run(cfg, str(tmp_path / "wd"))


def _wordpiece(path, words):
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers
  tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.train_from_iterator(
      [" ".join(words[i:] + words[:i]) for i in range(len(words))],
      trainers.WordPieceTrainer(vocab_size=80, show_progress=False,
                                special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
  tok.save(str(path))
  return str(path)


def test_finetune_vocab_checks_a_hf_tokenizer_json_like_a_sentencepiece_model(data, tmp_path):
  """An imported BERT's work dir holds a tokenizer.json (`TokenizersVocab`, which has `path`,
  no `model_path`); fine-tuning from it uses it, and naming another tokenizer is an error that
  compares files instead of failing on the attribute."""
  from common import entry
  from common.vocab.hf import TokenizersVocab
  from common.vocab import load_vocab
  os.makedirs(tmp_path / "src")
  saved = TokenizersVocab(_wordpiece(tmp_path / "src" / "tokenizer.json",
                                     ["alpha", "beta", "gamma"])).save_to(
                                         str(tmp_path / "run" / "vocab"))
  (tmp_path / "run" / "config.json").write_text("{}")
  cfg = get_config("tiny")
  cfg.finetune.init_from = str(tmp_path / "run")
  vocab = entry.run_vocab(cfg)
  assert isinstance(vocab, TokenizersVocab) and vocab.path == saved
  cfg.data.tokenizer = saved
  assert entry.run_vocab(cfg).path == saved
  cfg.data.tokenizer = _wordpiece(tmp_path / "other.json", ["delta", "epsilon"])
  with pytest.raises(ValueError, match=r"is not the tokenizer .*run was trained with "
                     r"\(.*run/vocab/tokenizer.json"):
    entry.run_vocab(cfg)
  assert load_vocab(str(tmp_path / "run" / "vocab")).path == saved
  _, sp = data
  assert load_vocab(sp).path == load_vocab(sp).model_path == sp  # the same name on both backends


def test_cli_bad_input(data, tmp_path):
  root, _ = data
  done = subprocess.run(
      [sys.executable, "-m", "bert_flax.train", "--config=configs/bert.py:tiny",
       "--config.task=classify", f"--config.classify.dataset=jsonl:{root}/cls_{{split}}.jsonl",
       "--config.classify.text_field=review", f"--workdir={tmp_path}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
  assert done.returncode == 2
  assert done.stderr.strip().splitlines()[-1].startswith(
      "error: jsonl:") and "no field 'review' (text_field)" in done.stderr
