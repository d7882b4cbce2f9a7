"""Accelerator check: what to run in a short GPU (or TPU) lease, in one go, under 8 minutes.

Sections, each isolated (a failure is printed with its traceback; the others still run), in
this order:
  env         versions, devices, device memory
  parity      tiny GPT, BERT and T5: AdamW steps on one accelerator (fp32, highest matmul
              precision) equal the same steps sharded over a (data, fsdp, tensor) = (2, 2, 2)
              mesh (of 8 accelerators when there are 8, else of 8 fake CPU devices): the
              sharding tests' claim, checked across backends
  attention   the cuDNN flash-attention path (what `model.attention_impl=auto` picks on NVIDIA
              GPUs in bf16) equals the XLA path, outputs and gradients
  train       GPT `124m` in bf16 (the preset: scanned layers, remat dots_no_batch, AdamW):
              compile time, step time, tokens/s, MFU against the chip's published peak, and
              the compiled program's memory analysis beside the measured peak
  generate    GPT `124m` bf16 KV-cache generation: new tokens/s
  checkpoint  Orbax async save and restore of the trained state (bitwise equal)

The figures go to stdout as one table and, section by section, to `--output` (JSON), so a
lease cut short still leaves what finished.

  python benchmarks/accelerator_check.py --output=check.json     # on the accelerator machine
  JAX_PLATFORMS=cpu python benchmarks/accelerator_check.py --smoke  # every path, tiny, on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Any, Callable

# Eight CPU devices stand in for a sharded mesh when fewer than 8 accelerators are present.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.accelerator_gpt import (GiB, accelerators, checkpoint_section,  # noqa: E402
                                        generate_section, train_section)
from benchmarks.variants import parse_variant  # noqa: E402
from common import steps, train_state  # noqa: E402
from common.partitioning import Partitioner  # noqa: E402



def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--smoke", action="store_true",
                 help="tiny shapes everywhere: exercises every path in a minute on a CPU")
  p.add_argument("--sections", default="env,parity,attention,train,generate,checkpoint")
  p.add_argument("--preset", default=None, help="GPT preset to train (default 124m; tiny "
                 "with --smoke)")
  p.add_argument("--batch_per_device", type=int, default=None,
                 help="rows of seq_len tokens per accelerator (default 64; 4 with --smoke)")
  p.add_argument("--steps", type=int, default=None, help="timed train steps (default 50)")
  p.add_argument("--gen_batch", type=int, default=32)
  p.add_argument("--gen_prompt", type=int, default=128)
  p.add_argument("--gen_new", type=int, default=256)
  p.add_argument("--train_variant", action="append", default=[], metavar="NAME:KEY=VAL[,...]",
                 help="train again with config overrides (e.g. noremat:model.remat_policy=none), "
                      "after the other sections")
  p.add_argument("--profile", default=None, metavar="DIR",
                 help="after timing, trace 3 train steps with jax.profiler into DIR")
  p.add_argument("--deadline_s", type=float, default=0.0,
                 help="skip sections that would start after this many seconds (0: none)")
  p.add_argument("--output", default=None, help="JSON file, rewritten after every section")
  a = p.parse_args(argv)
  a.preset = a.preset or ("tiny" if a.smoke else "124m")
  a.batch_per_device = a.batch_per_device or (4 if a.smoke else 64)
  a.steps = a.steps or (3 if a.smoke else 50)
  if a.smoke:
    a.gen_batch, a.gen_prompt, a.gen_new = 4, 8, 8
  return a


# ------------------------------------------------------------------------------ sections


def env_section(args) -> dict:
  dev = accelerators()[0]
  stats = dev.memory_stats() or {}
  out = {"jax": jax.__version__, "platform": dev.platform, "device_kind": dev.device_kind,
         "device_count": len(accelerators()), "process_count": jax.process_count(),
         "cpu_devices": len(jax.devices("cpu")),
         "memory_limit_gib": stats.get("bytes_limit", 0) / GiB}
  for name in ("flax", "optax", "orbax.checkpoint", "grain"):
    try:
      out[name] = __import__(name, fromlist=["_"]).__version__
    except (ImportError, AttributeError):
      out[name] = "?"
  for attr in ("compute_capability", "core_count"):
    if hasattr(dev, attr):
      out[attr] = str(getattr(dev, attr))
  return out


def _family(name: str):
  """(config, model, batch(i)) of a family's tiny preset, with synthetic batches."""
  if name == "gpt":
    from configs.gpt import get_config
    from gpt_flax.model import GPTModel
    from tests.fakes import SyntheticLM
    cfg = get_config("tiny")
    data = SyntheticLM(cfg.train.batch_size, cfg.data.seq_len, cfg.model.vocab_size)
    return cfg, GPTModel(cfg), data.global_batch
  if name == "bert":
    from bert_flax.model import BertPretrainModel
    from configs.bert import get_config
    from tests.bert_flax import fakes as bert_fakes
    cfg = get_config("tiny")
    cfg.pretrain.nsp = True
    return cfg, BertPretrainModel(cfg), lambda i: bert_fakes.synthetic_batch(cfg, i)
  from configs.t5 import get_config
  from t5x_lite.model import T5Model
  from tests.t5x_lite import fakes as t5_fakes
  cfg = get_config("tiny")
  return cfg, T5Model(cfg), lambda i: t5_fakes.synthetic_batch(i, input_len=32, target_len=16)


def _losses(cfg, model, batch_fn, partitioner: Partitioner, num_steps: int) -> np.ndarray:
  setup = train_state.make_setup(model, cfg, partitioner)
  state = train_state.init_state(setup)
  step = steps.make_train_step(setup)
  out = []
  for i in range(num_steps):
    state, m = step(state, setup.partitioner.global_batch(batch_fn(i)))
    out.append([float(m["loss"]), float(m["grad_norm"])])
  return np.asarray(out)


def parity_section(args) -> dict:
  accs = accelerators()
  sharded_devices = accs[:8] if len(accs) >= 8 else jax.devices("cpu")[:8]
  out = {"sharded_on": f"{len(sharded_devices)} x {sharded_devices[0].platform}"}
  ok = True
  with jax.default_matmul_precision("highest"):
    for family in ("gpt", "bert", "t5"):
      cfg, model, batch_fn = _family(family)
      one = _losses(cfg, model, batch_fn, Partitioner(1, 1, 1, devices=accs[:1]), 3)
      many = _losses(cfg, model, batch_fn, Partitioner(2, 2, 2, devices=sharded_devices), 3)
      diff = float(np.max(np.abs(one - many) / np.maximum(np.abs(many), 1e-3)))
      out[family] = {"accelerator": one[:, 0].round(6).tolist(),
                     "sharded": many[:, 0].round(6).tolist(), "max_rel_diff": diff}
      ok &= bool(np.isfinite(one).all()) and diff < 1e-3
  out["pass"] = ok
  return out


def attention_section(args) -> dict:
  """The cuDNN flash-attention path equals the XLA path (outputs and input gradients) on a
  packed, padded, causal bf16 batch; on a CPU it reports the path is unavailable."""
  from flax import nnx
  from common.attention import MultiHeadAttention, make_mask
  p = Partitioner(1, 1, 1, devices=accelerators()[:1])
  length = 256 if not args.smoke else 32
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((4, length, 256)), jnp.bfloat16)
  seg = np.where(np.arange(length) < length // 3, 1, 2)[None].repeat(4, 0)
  seg[:, -7:] = 0  # padding
  mask = make_mask(jnp.asarray(seg), jnp.asarray(seg), causal=True)
  out = {}
  results = {}
  for impl in ("xla", "cudnn"):
    with nnx.use_eager_sharding(False):
      attn = MultiHeadAttention(256, 4, 64, rngs=nnx.Rngs(0), dtype=jnp.bfloat16,
                                implementation=impl)
    graphdef, state = nnx.split(attn)

    def loss(x, state=state, graphdef=graphdef):
      y = nnx.merge(graphdef, state)(x, mask=mask, causal=True)[0]
      return jnp.sum(y.astype(jnp.float32) * (seg[..., None] > 0)), y
    try:
      (_, y), g = p.jit(jax.value_and_grad(loss, has_aux=True))(x)
      results[impl] = (np.asarray(y, np.float32), np.asarray(g, np.float32))
    except ValueError as e:  # cudnn refused (not a GPU): say so
      out[impl] = f"unavailable: {e}"
  if "cudnn" in results:
    real = seg > 0
    (y0, g0), (y1, g1) = results["xla"], results["cudnn"]
    rel = lambda a, b: float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
    out.update(out_rel_diff=rel(y1[real], y0[real]), grad_rel_diff=rel(g1[real], g0[real]))
    out["pass"] = out["out_rel_diff"] < 2e-2 and out["grad_rel_diff"] < 2e-2
  return out


SECTIONS: dict[str, Callable[..., dict]] = {
    "env": lambda a, s: env_section(a), "parity": lambda a, s: parity_section(a),
    "attention": lambda a, s: attention_section(a),
    "train": train_section, "generate": generate_section, "checkpoint": checkpoint_section}


def _fmt(v: Any) -> str:
  if isinstance(v, float):
    return f"{v:.4g}"
  if isinstance(v, dict):
    return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
  return str(v)


def main(argv=None) -> int:
  args = parse_args(argv)
  names = [s.strip() for s in args.sections.split(",") if s.strip()]
  unknown = set(names) - set(SECTIONS)
  if unknown:
    sys.exit(f"error: unknown sections {sorted(unknown)}; valid: {', '.join(SECTIONS)}")
  runs = [(name, SECTIONS[name]) for name in names]
  for spec in args.train_variant:
    variant, overrides = parse_variant(spec)
    runs.append((f"train_{variant}", lambda a, s, o=overrides: train_section(a, {}, o)))
  results: dict[str, Any] = {"args": vars(args)}
  shared: dict = {}
  failed = []
  start = time.perf_counter()
  for name, fn in runs:
    t0 = time.perf_counter()
    if args.deadline_s and t0 - start > args.deadline_s:
      results[name] = {"error": f"skipped: past --deadline_s={args.deadline_s:g}"}
      failed.append(name)
      continue
    try:
      results[name] = fn(args, shared)
      if results[name].get("pass") is False:
        failed.append(name)
    except Exception as e:  # pylint: disable=broad-except
      traceback.print_exc()
      results[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
      failed.append(name)
    results[name]["section_s"] = time.perf_counter() - t0
    print(f"== {name}: {_fmt(results[name])}", flush=True)
    if args.output:
      with open(args.output, "w") as f:
        json.dump(results, f, indent=1, default=str)
  print("\n| section | result | figures |\n|---|---|---|")
  for name, _ in runs:
    r = results[name]
    figures = {k: v for k, v in r.items() if k not in ("pass", "error")}
    print(f"| {name} | {'FAILED' if name in failed else 'ok'} | {_fmt(r.get('error', figures))} |")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
