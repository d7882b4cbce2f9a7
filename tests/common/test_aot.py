"""Ahead-of-time compilation for TPU slices and GPU hosts on this CPU machine (common/aot*.py):
the name map, the abstract batches against the real pipelines, tiny presets compiled for a
TPU topology and a GPU target through the trainer's own steps, and the clear failures (out of
memory, a batch the mesh does not divide, a layout the mesh cannot shard, a bad name)."""

import os
import pickle
import re
import subprocess
import sys

import jax
import numpy as np
import pytest


# pylint: disable=g-import-not-at-top,wrong-import-position
from common import aot, aot_compile, aot_plan, aot_targets
from common import config as config_lib
from common.steps import make_train_step
from tests.fakes import word_corpus

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cfg(family: str, preset: str = "tiny", **overrides):
  cfg = config_lib.load_config_file(os.path.join(ROOT, "configs", f"{family}.py:{preset}"))
  return config_lib.apply_overrides(cfg, overrides)


def test_the_remat_ladder_names_every_policy():
  from common.transformer import REMAT_POLICIES  # pylint: disable=g-import-not-at-top
  assert set(aot_targets.REMAT_LADDER) == set(REMAT_POLICIES)


def test_every_documented_name_resolves_to_its_topology():
  expect = {"v4-8": (4, 1), "v4-32": (16, 4), "v5e-1": (1, 1), "v5e-8": (8, 1),
            "v5e-256": (256, 64), "v5litepod-16": (16, 4), "v5p-64": (32, 8),
            "2xv5e-256": (512, 128), "h100x8": (8, 1), "h200x1": (1, 1), "2xh100x8": (16, 2)}
  for name in aot_targets.DOCUMENTED:
    target = aot_targets.resolve(name)
    devices = target.devices()
    assert len(devices) == target.num_devices, name
    assert len({d.process_index for d in devices}) == target.num_hosts, name
    if name in expect:
      assert (target.num_devices, target.num_hosts) == expect[name], name
  assert aot_targets.resolve("v5p-1280").topology["topology_name"] == "v5:4x8x20"
  assert aot_targets.resolve("v4-4096").topology["topology_name"] == "v4:8x16x16"
  assert aot_targets.resolve("h200x8").cudnn_version == 91900
  assert aot_targets.resolve("h200x8").chip.hbm_bytes == 150109880320   # the real H200's


@pytest.mark.parametrize("name", ["v4-12", "v5e-3", "h100x9", "tpu-v5", "0xv5e-4"])
def test_a_bad_name_is_one_line_listing_the_valid_patterns(name):
  with pytest.raises(ValueError) as e:
    aot_targets.resolve(name)
  assert "\n" not in str(e.value) and "v5e-N" in str(e.value) and "h100xG" in str(e.value)


def test_batch_shapes_match_what_the_pipelines_feed(tmp_path):
  from bert_flax.data import pretrain_dataset
  from bert_flax.masking import masking_config
  from common.data.pipeline import lm_dataset
  from common.data.sources import open_source
  from common.vocab import SentencePieceVocab
  from t5x_lite.span_corruption import span_corruption_dataset
  vocab = SentencePieceVocab(word_corpus(tmp_path, [("train", 200)]), extra_ids=10)
  source = open_source(f"jsonl:{tmp_path}/{{split}}.jsonl", "train", str(tmp_path))
  spec = lambda b: {k: (v.shape, np.dtype(v.dtype)) for k, v in b.items()}
  batches = {"gpt": lm_dataset(source, vocab, text_field="body", seq_len=32, batch_size=8,
                               seed=0),
             "bert": pretrain_dataset(source, vocab, text_field="body", seq_len=32, batch_size=8,
                                      seed=0, masking=masking_config(vocab, max_predictions=6)),
             "t5": span_corruption_dataset(source, vocab, text_field="body", input_len=32,
                                           batch_size=8, seed=0)[0]}
  for family, ds in batches.items():
    model, cfg = aot_compile.build_model(family, _cfg(family))
    assert spec(next(iter(ds))) == spec(model.batch_shapes(cfg.train.batch_size)), family


@pytest.mark.parametrize("family,target,steps", [("gpt", "v5e-4", ["train", "eval"]),
                                                  ("bert", "v4-8", ["train"]),
                                                  ("t5", "v5e-4", ["train"])])
def test_tiny_presets_compile_for_a_tpu_slice_and_fit(family, target, steps, tmp_path, capsys):
  verdict = aot.run(f"configs/{family}.py:tiny", _cfg(family), target, steps,
                    serialize=str(tmp_path))
  out = capsys.readouterr().out
  assert verdict.startswith(f"verdict: fits on {target}")
  assert all(f"{step} step: compiled" in out for step in steps) and "MFU <=" in out
  feed = float(re.search(r"each host must feed ([\d,]+) tokens/s", out)[1].replace(",", ""))
  cores = int(re.search(r"input: ~(\d+) CPU core", out)[1])
  assert cores == aot_targets.input_cores(family, feed) >= 1
  assert f"--config.data.num_workers={cores}" in out
  with open(tmp_path / f"{steps[0]}_step.pkl", "rb") as f:
    payload, _, _ = pickle.load(f)
  assert len(payload) > 1000


def test_state_bytes_come_from_the_shard_shapes_and_flops_from_the_unrolled_step():
  cfg = _cfg("gpt", **{"model.num_layers": 3})
  prep = aot_compile.prepare("gpt", cfg, aot_targets.resolve("v5e-4"))
  n = sum(x.size for x in jax.tree.leaves(prep.setup.abstract_state["params"]))
  assert prep.params_bytes == 4 * n                 # data parallel: whole fp32 copy per device
  assert abs(prep.opt_bytes - 8 * n) < 64           # Adam's two moments (+ counts)
  fsdp = aot_compile.prepare("gpt", config_lib.apply_overrides(cfg, {"mesh.fsdp": 4}),
                             aot_targets.resolve("v5e-4"))
  assert fsdp.params_bytes < prep.params_bytes / 3
  scanned = aot_compile.step_flops("gpt", cfg, "train")
  unrolled = aot_compile.step_flops("gpt", config_lib.apply_overrides(
      cfg, {"model.scan_layers": False}), "train")
  assert scanned == unrolled
  assert 1.0 < scanned / aot_compile.analytic_flops(prep, "train") < 1.1
  full = aot_compile.step_flops("gpt", config_lib.apply_overrides(
      cfg, {"model.remat_policy": "full"}), "train")
  assert full > 1.15 * scanned                      # the recomputed forward pass is counted


def test_gpu_target_compiles_with_cudnn_attention_and_fits(capsys):
  cfg = _cfg("gpt", **{"model.dtype": "bfloat16"})
  verdict = aot.run("configs/gpt.py:tiny", cfg, "h200x1", ["train"])
  assert verdict.startswith("verdict: fits on h200x1")
  assert "MFU <=" in capsys.readouterr().out
  prep = aot_compile.prepare("gpt", cfg, aot_targets.resolve("h200x1"))
  with aot_targets.target_context(prep.target):
    lowered = make_train_step(prep.setup).lower(prep.setup.abstract_train_state(), prep.batch)
  assert "cudnn" in lowered.as_text()


def test_out_of_memory_is_one_line_with_what_to_change():
  with pytest.raises(aot.DoesNotFit) as e:      # over an HBM given by flag
    aot.run("configs/bert.py:tiny", _cfg("bert"), "v5e-4", ["eval"], hbm_gib=0.001)
  line = str(e.value)
  assert "\n" not in line and line.startswith("does not fit: the eval step on v5e-4 needs")
  assert "over; largest: temporaries" in line and "--config.train.batch_size=4 (now 8)" in line
  with pytest.raises(aot.DoesNotFit) as e:      # the TPU compiler's own RESOURCE_EXHAUSTED
    aot.run("configs/gpt.py:124m", _cfg("gpt", "124m", **{"train.batch_size": 64}), "v5e-1",
            ["train"])
  line = str(e.value)
  assert "(temporaries alone) of 16.00 GiB HBM" in line
  assert "--config.model.remat_policy=full" in line and "grad_accum_steps=2 (now 1" in line


def test_layouts_the_mesh_cannot_take_are_named():
  with pytest.raises(ValueError, match="not divisible by the data axes"):
    aot_compile.prepare("gpt", _cfg("gpt"), aot_targets.resolve("v5e-16"))
  # 4 heads over tensor=8, in attention kernels above the small-parameter exemption (1 MiB).
  wide = _cfg("gpt", **{"mesh.data": 1, "mesh.tensor": 8, "model.d_model": 512,
                        "model.d_ff": 1024})
  with pytest.raises(ValueError, match="not divisible by tensor=8"):
    aot_compile.prepare("gpt", wide, aot_targets.resolve("v5e-8"))
  partial = config_lib.apply_overrides(wide, {"mesh.allow_partial_sharding": True})
  prep = aot_compile.prepare("gpt", partial, aot_targets.resolve("v5e-8"))
  lines = aot.describe(prep, prep.target.chip.hbm_bytes)
  assert any(line.startswith("sharded fewer ways") and "tensor=8" in line for line in lines)


def test_plan_ranks_what_it_compiled_and_counts_the_rest(capsys):
  cands = aot_plan.plan("configs/gpt.py:tiny", _cfg("gpt"), "v5e-4", max_compiles=1)
  out = capsys.readouterr().out
  assert sum(c.compiled is not None for c in cands) == 1
  assert "data x fsdp x tensor" in out and "best: --config.mesh.data=" in out
  assert "input cores" in out
  assert f"{len(cands) - 1} candidates not compiled" in out


def _cli(*args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, FLAX_PRETRAIN_TCMALLOC="0")
  return subprocess.run([sys.executable, "-m", "common.aot", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_cli_exit_status_and_one_error_line():
  oom = _cli("--config=configs/gpt.py:tiny", "--target=v5e-1", "--hbm_gib=0.001",
             "--steps=eval")
  assert oom.returncode == aot.EXIT_DOES_NOT_FIT
  assert [l for l in oom.stderr.splitlines() if l.startswith("does not fit")]
  bad = _cli("--config=configs/gpt.py:tiny", "--target=v9-8")
  errors = [l for l in bad.stderr.splitlines() if l.startswith("error:")]
  assert bad.returncode == 2 and len(errors) == 1 and "v5e-N" in errors[0]


def test_input_cores_cover_the_feed_rate():
  per_core = aot_targets.PIPELINE_TOKENS_PER_CORE["gpt"]
  assert aot_targets.input_cores("gpt", 1.0) == 1
  assert aot_targets.input_cores("gpt", per_core) == 1
  assert aot_targets.input_cores("gpt", per_core + 1) == 2
