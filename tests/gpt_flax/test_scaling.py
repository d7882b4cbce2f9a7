"""Scaling study: fits recover known exponents, N and C match independent counts, and a tiny
sweep runs end to end, resumes and skips finished runs."""

import csv
import dataclasses
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.extend import core as jcore

from common import train_state
from common.partitioning import Partitioner
from gpt_flax import scaling
from gpt_flax import scaling_fit as sf
from gpt_flax.model import GPTModel
from tests import fakes

# ---------------------------------------------------------------------------------------------
# Fits on synthetic data drawn from known laws (1 % multiplicative noise unless stated).


def _noisy(y, sigma, seed=0):
  return y * np.exp(np.random.default_rng(seed).normal(0.0, sigma, np.shape(y)))


def test_power_law_recovers_kaplan_exponent():
  n = np.geomspace(1e4, 3e6, 7)
  y = _noisy((8.8e13 / n) ** 0.076, 0.01)
  fit = sf.bootstrap(lambda y_: sf.power_law(n, y_), y, num_params=2, n_boot=300)
  alpha, (lo, hi) = fit["value"]["alpha"], fit["ci68"]["alpha"]
  assert abs(alpha - 0.076) < 0.01
  assert lo < alpha < hi and hi - lo < 0.03
  assert abs(alpha - 0.076) < 3 * fit["std"]["alpha"] + 1e-3


def test_power_law_plus_constant_recovers_exponent_and_floor():
  n = np.geomspace(1e4, 3e6, 8)
  y = _noisy(1.8 + (2e5 / n) ** 0.3, 0.005)
  params, _ = sf.power_law_plus_constant(n, y)
  assert abs(params["alpha"] - 0.3) < 0.05 and abs(params["E"] - 1.8) < 0.15
  # The pure power law cannot bend: it reports a much smaller exponent for the same data.
  assert sf.power_law(n, y)[0]["alpha"] < 0.2


def test_parametric_recovers_chinchilla_exponents_and_compute_optimal_n():
  n, d = (g.ravel() for g in np.meshgrid(np.geomspace(1e4, 3e6, 7), [2e5, 5e5, 1.2e6]))
  y = _noisy(1.5 + 300 / n ** 0.35 + 200 / d ** 0.3, 0.005)
  full, _ = sf.parametric(n, d, y)
  fit = sf.bootstrap(lambda y_: sf.parametric(n, d, y_, full), y, num_params=5, n_boot=50)
  v, std = fit["value"], fit["std"]
  # Within 3 bootstrap standard deviations, and the deviations themselves small: beta rests
  # on three token budgets only, so it is the loosest (std ~0.03 here).
  for key, true, tol in (("alpha", 0.35, 0.03), ("beta", 0.3, 0.1), ("a", 0.3 / 0.65, 0.07)):
    assert abs(v[key] - true) < min(3 * std[key] + 0.005, tol), (key, v[key], std[key])
  # N_opt(C) from the fit sits where the true L(N, C / 6N) is lowest.
  c = 1e13
  grid = np.geomspace(1e3, 1e8, 20001)
  true_opt = grid[np.argmin(300 / grid ** 0.35 + 200 / (c / (6 * grid)) ** 0.3)]
  assert abs(math.log(sf.compute_optimal_n(v, c) / true_opt)) < 0.3


def test_frontier_keeps_runs_that_beat_all_cheaper_runs():
  compute = [1, 2, 3, 4, 5]
  loss = [5.0, 5.5, 4.0, 4.2, 3.9]
  assert sf.frontier(compute, loss).tolist() == [0, 2, 4]


def test_fit_all_says_why_a_fit_is_missing():
  out = sf.fit_all([1e4, 2e4, 4e4], [1e5] * 3, [1e10, 2e10, 4e10], [6.0, 5.5, 5.1], n_boot=20)
  assert "value" in out["L_N"]["power"]
  assert "at least 4 points" in out["L_N"]["power+E"]["skipped"]
  assert "at least 6 points" in out["parametric"]["skipped"]


# ---------------------------------------------------------------------------------------------
# Parameter and FLOP counts against independent counts.


def _dot_flops(jaxpr) -> float:
  """Matmul FLOPs in a jaxpr: 2 x output size x contracted size per dot_general; a scan body
  counts once per iteration."""
  total = 0.0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contract)
    times = eqn.params["length"] if eqn.primitive.name == "scan" else 1
    for sub in jcore.jaxprs_in_params(eqn.params):
      total += times * _dot_flops(sub)
  return total


def test_param_and_flop_counts_match_independent_counts():
  sweep = scaling.Sweep(sizes=scaling.parse_sizes("48x2x3"), steps=(4,), batch_size=8, seq_len=32,
                        eval_batches=1, vocab_size=512)
  size = sweep.sizes[0]
  cfg = scaling.run_config(sweep, scaling.Run(size, 4), {})
  counts = scaling.counts(cfg)
  model = GPTModel(cfg)
  with nnx.use_eager_sharding(False):
    net = model.make_network(nnx.Rngs(0))
  leaves = {"/".join(map(str, p)): v[...] for p, v in nnx.to_flat_state(nnx.state(net, nnx.Param))}
  total = sum(x.size for x in leaves.values())
  embeddings = sum(x.size for k, x in leaves.items() if k.endswith("embedding"))
  vectors = sum(x.size for k, x in leaves.items() if not k.endswith(("kernel", "embedding")))
  d, layers = size.d_model, size.num_layers
  assert counts["N_total"] == total
  assert counts["N"] == total - embeddings == model.num_params()
  assert counts["N"] == layers * (12 * d * d + 13 * d) + 2 * d  # Kaplan's 12 L d^2 + biases/norms
  assert counts["flops_per_token"] == 6 * counts["N"] + 12 * layers * d * sweep.seq_len
  assert counts["flops_per_token_with_logits"] == model.flops_per_token()

  # Every matmul of a training step (forward + backward) traced: 6 x (matrix params + tied
  # logits) + attention per token; bias/norm params are in N but cost no matmul.
  setup = train_state.make_setup(model, cfg, Partitioner.from_config(cfg.mesh))
  b, t = sweep.batch_size, sweep.seq_len
  batch = {k: jnp.zeros((b, t), jnp.int32)
           for k in ("inputs", "targets", "segment_ids", "positions")}
  batch["weights"] = jnp.ones((b, t), jnp.float32)
  loss = lambda p: model.loss(setup.merge(p), batch, dropout_key=None)["loss"]
  with setup.partitioner.context():
    traced = jax.make_jaxpr(jax.grad(loss))(setup.abstract_state["params"])
  per_token = _dot_flops(traced.jaxpr) / (b * t)
  assert per_token == counts["flops_per_token_with_logits"] - 6 * vectors
  assert per_token == counts["flops_per_token"] + 6 * 512 * d - 6 * vectors


def test_presets_span_the_required_sizes():
  for name, sweep in scaling.PRESETS.items():
    # Kaplan's count, checked against the parameter tree above.
    n = [s.num_layers * (12 * s.d_model ** 2 + 13 * s.d_model) + 2 * s.d_model for s in sweep.sizes]
    assert len(n) >= 6 and max(n) / min(n) >= 30, name
    assert sweep.vocab_size == 8192 and len(sweep.steps) >= 2, name


def test_parse_sizes_errors_name_the_bad_item():
  assert scaling.parse_sizes("64x2, 256x4x8") == (scaling.Size(64, 2, 2), scaling.Size(256, 4, 8))
  with pytest.raises(ValueError, match="bad size '64'"):
    scaling.parse_sizes("32x1,64")
  with pytest.raises(ValueError, match="not divisible by 3 heads"):
    scaling.parse_sizes("64x1x3")


# ---------------------------------------------------------------------------------------------
# A tiny sweep end to end.


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """A generated JSONL corpus (train/validation) and a SentencePiece model trained on it."""
  root = tmp_path_factory.mktemp("corpus")
  model = fakes.word_corpus(root, (("train", 300), ("validation", 40)))
  return {"dataset": f"jsonl:{root}/{{split}}.jsonl", "data_dir": str(root), "tokenizer": model,
          "text_field": "body"}


TINY = scaling.Sweep(sizes=scaling.parse_sizes("32x1,32x2,32x3"), steps=(4,), batch_size=8,
                     seq_len=32, eval_batches=2, evals_per_run=1, log_every=2, vocab_size=512)


def test_tiny_sweep_end_to_end_resumes_and_skips(corpus, tmp_path, capsys):
  fit = scaling.run_sweep(TINY, str(tmp_path), data=corpus, n_boot=20)
  out = capsys.readouterr().out
  assert out.count(": training 4 steps") == 3
  assert "Kaplan20" in out and "alpha_N" in out
  for name in ("runs.csv", "fit.json", "sweep.json", "scaling.png", "loss_vs_params.png",
               "loss_vs_compute.png", "compute_optimal.png", "learning_curves.png"):
    assert os.path.getsize(tmp_path / name) > 0, name
  rows = list(csv.DictReader(open(tmp_path / "runs.csv")))
  assert [r["name"] for r in rows] == ["d0032l01_s000004", "d0032l02_s000004", "d0032l03_s000004"]
  for r in rows:
    assert int(r["D"]) == 4 * 8 * 32
    assert math.isclose(float(r["C_6ND"]), 6 * int(r["N"]) * int(r["D"]))
    assert float(r["C"]) > float(r["C_6ND"]) and float(r["val_loss"]) > 0
    assert float(r["wall_s"]) > 0 and int(r["sessions"]) == 1
    curve = scaling.learning_curve(str(tmp_path / "runs" / r["name"]))
    assert curve["train_steps"].tolist() == [2, 4] and curve["eval_steps"].tolist() == [4]
  saved = json.load(open(tmp_path / "fit.json"))
  assert saved["L_N"]["power"]["value"]["alpha"] == fit["L_N"]["power"]["value"]["alpha"]
  assert "skipped" in saved["parametric"]  # one token budget: no L(N, D) fit, and it says why

  # Rerun: finished runs are read back, not retrained. A run whose result was lost resumes
  # from its final checkpoint (no step repeated) and records a second session.
  os.remove(tmp_path / "runs" / "d0032l02_s000004" / "result.json")
  again = scaling.run_sweep(TINY, str(tmp_path), data=corpus, n_boot=20)
  out = capsys.readouterr().out
  assert out.count("finished earlier, skipped") == 2 and out.count(": training 4 steps") == 1
  assert "| loss " not in out.split("d0032l02_s000004: training")[1]  # no training step logged
  rows2 = list(csv.DictReader(open(tmp_path / "runs.csv")))
  assert np.allclose([float(r["val_loss"]) for r in rows2], [float(r["val_loss"]) for r in rows],
                     rtol=1e-6)
  assert [r["sessions"] for r in rows2] == ["1", "2", "1"]
  assert math.isclose(again["L_N"]["power"]["value"]["alpha"],
                      fit["L_N"]["power"]["value"]["alpha"], rel_tol=1e-4)

  # The same work dir with a different sweep is refused before anything is trained.
  changed = dataclasses.replace(TINY, base_lr=1e-3)
  with pytest.raises(ValueError, match="different config"):
    scaling.run_sweep(changed, str(tmp_path), data=corpus)
