"""The accelerator check's GPT sections (`benchmarks/accelerator_check.py` runs them): GPT
training in bf16 with its compiled memory analysis, KV-cache generation, and an Orbax
save/restore of the trained state."""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from common import metrics, steps, train_state
from common.checkpoint import Checkpointer
from common.config import apply_overrides
from common.partitioning import Partitioner

GiB = 2 ** 30


def accelerators() -> list[Any]:
  """The default backend's devices (the GPUs or TPUs; the CPU when that is all there is)."""
  return jax.devices()


def _train_config(args, overrides: dict | None = None):
  from configs.gpt import get_config
  cfg = get_config(args.preset)
  n = len(accelerators())
  cfg.train.batch_size = args.batch_per_device * n
  cfg.model.dtype = "bfloat16"
  cfg.mesh.update(data=1, fsdp=-1, tensor=1)
  return apply_overrides(cfg, overrides or {})


def _lm_batches(cfg, count: int) -> list[dict[str, np.ndarray]]:
  rng = np.random.default_rng(0)
  b, length = cfg.train.batch_size, cfg.data.seq_len
  out = []
  for _ in range(count):
    t = rng.integers(4, cfg.model.vocab_size - 64, (b, length + 1)).astype(np.int32)
    out.append({"inputs": t[:, :-1], "targets": t[:, 1:],
                "segment_ids": np.ones((b, length), np.int32),
                "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (b, length)).copy(),
                "weights": np.ones((b, length), np.float32)})
  return out


def _memory(compiled) -> dict:
  m = compiled.memory_analysis()
  if m is None:
    return {}
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "temp_size_in_bytes", "peak_memory_in_bytes")
  return {f.replace("_in_bytes", "_gib"): getattr(m, f) / GiB for f in fields if hasattr(m, f)}


def train_section(args, shared: dict, overrides: dict | None = None) -> dict:
  from gpt_flax.model import GPTModel
  cfg = _train_config(args, overrides)
  model = GPTModel(cfg)
  setup = train_state.make_setup(model, cfg, Partitioner.from_config(cfg.mesh, devices=accelerators()))
  p = setup.partitioner
  batches = [p.global_batch(b) for b in _lm_batches(cfg, 4)]
  t0 = time.perf_counter()
  step = steps.make_train_step(setup)
  compiled = step.lower(setup.abstract_train_state(), setup.abstract_batch(batches[0])).compile()
  compile_s = time.perf_counter() - t0
  state = train_state.init_state(setup)
  for i in range(2):  # warm-up (allocator, autotuning caches)
    state, m = compiled(state, batches[i % len(batches)])
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for i in range(args.steps):
    state, m = compiled(state, batches[i % len(batches)])
  loss = float(m["loss"])
  jax.block_until_ready(state)
  dt = (time.perf_counter() - t0) / args.steps
  if args.profile and not overrides:
    with jax.profiler.trace(args.profile):
      for i in range(3):
        state, m = compiled(state, batches[i % len(batches)])
      jax.block_until_ready(state)
  tokens = cfg.train.batch_size * cfg.data.seq_len
  tps = tokens / dt
  peak = metrics.peak_flops("bfloat16")
  stats = accelerators()[0].memory_stats() or {}
  if not overrides:
    shared.update(setup=setup, state=state, cfg=cfg)
  return {"overrides": overrides or {}, "preset": args.preset, "params_m": model.num_params(non_embedding=False) / 1e6,
          "global_batch": cfg.train.batch_size, "seq_len": cfg.data.seq_len,
          "remat": cfg.model.remat_policy, "mesh": p.shape, "fsdp_split": p.fsdp_split,
          "compile_s": compile_s, "step_ms": dt * 1e3, "tokens_per_s": tps,
          "flops_per_token": model.flops_per_token(),
          "mfu": tps * model.flops_per_token() / peak if peak else float("nan"),
          "peak_flops": peak, "final_loss": loss, "compiled_memory": _memory(compiled),
          "measured_peak_gib": stats.get("peak_bytes_in_use", 0) / GiB}


def generate_section(args, shared: dict) -> dict:
  from gpt_flax.generate import generate_tokens
  setup, cfg = shared.get("setup"), shared.get("cfg")
  if setup is None:
    from gpt_flax.model import GPTModel
    cfg = _train_config(args)
    setup = train_state.make_setup(GPTModel(cfg), cfg,
                               Partitioner.from_config(cfg.mesh, devices=accelerators()))
    shared.update(setup=setup, cfg=cfg, state=train_state.init_state(setup))
  params = shared["state"]["params"]
  rng = np.random.default_rng(1)
  prompts = [rng.integers(4, cfg.model.vocab_size - 64, args.gen_prompt).tolist()
             for _ in range(args.gen_batch)]
  run = lambda: generate_tokens(setup.graphdef, params, prompts, max_len=cfg.model.max_len,
                                max_new_tokens=args.gen_new, eos_id=-1,
                                batch_size=args.gen_batch, partitioner=setup.partitioner)
  t0 = time.perf_counter()
  run()
  first_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  outs = run()
  dt = time.perf_counter() - t0
  new = sum(len(o) for o in outs)
  return {"batch": args.gen_batch, "prompt": args.gen_prompt, "new_tokens": args.gen_new,
          "first_call_s": first_s, "seconds": dt, "new_tokens_per_s": new / dt,
          "ms_per_token_step": dt / args.gen_new * 1e3, "all_rows_full": new == len(prompts)
          * args.gen_new}


def checkpoint_section(args, shared: dict) -> dict:
  import tempfile
  from tests.fakes import SyntheticLM
  setup, state = shared.get("setup"), shared.get("state")
  if setup is None:
    raise RuntimeError("needs the train or generate section's state")
  state_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
  with tempfile.TemporaryDirectory() as d:
    ckpt = Checkpointer(d, max_to_keep=1, async_save=True)
    t0 = time.perf_counter()
    ckpt.save(1, state, SyntheticLM(), {"check": "accelerator"})
    returned_s = time.perf_counter() - t0
    ckpt.manager.wait_until_finished()
    saved_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    restored = ckpt.restore(1, setup.abstract_state, setup.state_shardings, SyntheticLM())
    restore_s = time.perf_counter() - t0
    ckpt.close()
  same = all(bool(jnp.array_equal(a, b)) for a, b in
             zip(jax.tree.leaves(state["params"]), jax.tree.leaves(restored["params"])))
  return {"state_gib": state_bytes / GiB, "save_returned_s": returned_s, "saved_s": saved_s,
          "restore_s": restore_s, "params_equal": same}
