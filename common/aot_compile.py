"""The engine behind `python -m common.aot`: a config's model, train state and batch laid out
on a target's devices by the trainer's own setup, its train / eval step lowered and compiled
through the trainer's own step functions, and the figures that say whether it fits.

FLOPs: XLA's cost analysis counts the body of a loop once, and the presets scan their layers
(and accumulate gradients in a scan), so the compiled program's own count is far too low.
The FLOPs per step are instead XLA's count of the same step traced with the layers unrolled
and one microbatch, at 1 and 2 layers (per layer stack) on one CPU device, extrapolated
linearly to the real depth: exact for a stack of identical layers, and it includes the
recomputation the remat policy asks for.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import time
from typing import Any

import jax
from jax._src.lib import xla_client
from ml_collections import ConfigDict

from common import config as config_lib
from common.aot_targets import Target, target_context
from common.partitioning import Partitioner
from common.steps import make_eval_step, make_train_step
from common.train_state import Setup, check_config, make_setup

FAMILIES = ("gpt", "bert", "t5")
LAYER_FIELDS = {"gpt": ("num_layers",), "bert": ("num_layers",),
                "t5": ("num_encoder_layers", "num_decoder_layers")}
STEPS = ("train", "eval")


def family_of(config_spec: str) -> str:
  """`configs/gpt.py:124m` -> "gpt" (the config file names the family)."""
  name = os.path.splitext(os.path.basename(config_spec.partition(":")[0]))[0]
  if name not in FAMILIES:
    raise ValueError(f"cannot tell the model family of --config={config_spec}: the file must "
                     f"be named {', '.join(f + '.py' for f in FAMILIES)} (as in configs/)")
  return name


def build_model(family: str, cfg: ConfigDict) -> tuple[Any, ConfigDict]:
  """The model the family's train command builds, and the config its trainer runs with
  (BERT fine-tuning trains on the `classify` section's batch and length)."""
  if family == "gpt":
    from gpt_flax.model import GPTModel  # pylint: disable=g-import-not-at-top
    return GPTModel(cfg), cfg
  if family == "bert":
    from bert_flax import model as bert  # pylint: disable=g-import-not-at-top
    if cfg.task == "pretrain":
      return bert.BertPretrainModel(cfg), cfg
    if cfg.task not in bert.TASKS:
      raise ValueError(f"unknown task {cfg.task!r}; valid: {', '.join(bert.TASKS)}")
    from bert_flax.train import finetune_config  # pylint: disable=g-import-not-at-top
    c = cfg.classify
    ft = finetune_config(cfg, c.batch_size, c.batch_size)   # one epoch of one batch: shapes only
    labels = len([s for s in c.labels.split(",") if s.strip()]) or 2
    return bert.BertClassifierModel(ft, 1 if cfg.task == "regress" else labels), ft
  from t5x_lite import tasks  # pylint: disable=g-import-not-at-top
  from t5x_lite.model import T5Model  # pylint: disable=g-import-not-at-top
  tasks.check_task(cfg)
  input_len, target_len = tasks.lengths(cfg)
  return T5Model(cfg, input_len=input_len, target_len=target_len), cfg


@dataclasses.dataclass
class Prepared:
  """A config laid out on a target: everything known before compiling (instant)."""
  family: str
  cfg: ConfigDict
  model: Any
  target: Target
  setup: Setup
  params_bytes: float     # per device, from the shard shapes
  opt_bytes: float
  batch: dict[str, jax.ShapeDtypeStruct]

  @property
  def partitioner(self) -> Partitioner:
    return self.setup.partitioner

  @property
  def batch_bytes(self) -> float:
    return sum(_shard_bytes(a, a.sharding) for a in self.batch.values())

  @property
  def units_per_step(self) -> float:
    """What `flops_per_token` is per, in one step: tokens (T5: target tokens; a BERT
    classifier: examples)."""
    if self.family == "t5":
      per_row = self.model.target_len
    else:
      per_row = 1 if self.model.unit == "ex" else self.cfg.data.seq_len
    return self.cfg.train.batch_size * per_row

  @property
  def row_tokens(self) -> int:
    """Tokens the input pipeline makes per row (T5: inputs + targets)."""
    if self.family == "t5":
      return self.model.input_len + self.model.target_len
    return self.cfg.data.seq_len


def _shard_bytes(abstract: Any, sharding: Any) -> float:
  return math.prod(sharding.shard_shape(abstract.shape)) * abstract.dtype.itemsize


def prepare(family: str, cfg: ConfigDict, target: Target, devices: list[Any] | None = None
            ) -> Prepared:
  """Model, partitioner and train state on the target's devices, checked as training checks
  them (batch divisibility, processes, parameter layout); state bytes per device."""
  model, cfg = build_model(family, cfg)
  with target_context(target):
    partitioner = Partitioner.from_config(cfg.mesh, devices=devices or target.devices())
    check_config(cfg, partitioner)
    setup = make_setup(model, cfg, partitioner)
  per_device = lambda tree, shardings: sum(jax.tree.leaves(jax.tree.map(
      _shard_bytes, tree, shardings)))
  params = per_device(setup.abstract_state["params"], setup.state_shardings["params"])
  opt = per_device(setup.abstract_state["opt_state"], setup.state_shardings["opt_state"])
  batch = setup.abstract_batch(model.batch_shapes(cfg.train.batch_size))
  return Prepared(family, cfg, model, target, setup, params, opt, batch)


@dataclasses.dataclass
class Compiled:
  """One step compiled for the target; sizes are bytes per device."""
  step: str
  compile_s: float
  argument: float = 0.0
  output: float = 0.0
  alias: float = 0.0
  temp: float = 0.0
  peak: float = 0.0
  flops_raw: float | None = None       # the compiled program's own count (per device)
  bytes_raw: float | None = None       # its bytes accessed (per device)
  oom: str | None = None               # the compiler's RESOURCE_EXHAUSTED message


def compile_step(prep: Prepared, step: str, serialize_dir: str | None = None) -> Compiled:
  """Lowers the trainer's step inside the partitioner's context and compiles it for the
  target; out of memory at compile time (TPU) comes back as `oom`, not an exception."""
  setup = prep.setup
  state = setup.abstract_train_state()
  if step == "train":
    fn, args = make_train_step(setup), (state, prep.batch)
  else:
    fn, args = make_eval_step(setup), (state["params"], prep.batch)
  t0 = time.time()
  with target_context(prep.target):
    lowered = fn.lower(*args)
    try:
      compiled = lowered.compile()
    except Exception as e:  # pylint: disable=broad-except
      if "RESOURCE_EXHAUSTED" not in str(e):
        raise
      return Compiled(step, time.time() - t0, oom=str(e))
  seconds = time.time() - t0
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  out = Compiled(step, seconds, mem.argument_size_in_bytes, mem.output_size_in_bytes,
                 mem.alias_size_in_bytes, mem.temp_size_in_bytes, mem.peak_memory_in_bytes)
  if not out.peak:   # backends that leave it unset: live at once = args + outputs + temps
    out.peak = out.argument + out.output - out.alias + out.temp
  if cost:
    out.flops_raw, out.bytes_raw = cost.get("flops"), cost.get("bytes accessed")
  if serialize_dir:
    from jax.experimental import serialize_executable  # pylint: disable=g-import-not-at-top
    os.makedirs(serialize_dir, exist_ok=True)
    with open(os.path.join(serialize_dir, f"{step}_step.pkl"), "wb") as f:
      pickle.dump(serialize_executable.serialize(compiled), f)
  return out


def step_flops(family: str, cfg: ConfigDict, step: str) -> float:
  """XLA's FLOPs for one global step, the layers unrolled (see the module docstring)."""
  cpu = jax.devices("cpu")[0]
  fields = LAYER_FIELDS[family]
  depth = [cfg.model[f] for f in fields]

  def count(layers: list[int]) -> float:
    over = {"model.scan_layers": False, "train.grad_accum_steps": 1}
    over |= {f"model.{f}": n for f, n in zip(fields, layers)}
    model, c = build_model(family, config_lib.apply_overrides(cfg, over))
    setup = make_setup(model, c, Partitioner(1, 1, 1, devices=[cpu]))
    state = setup.abstract_train_state()
    batch = setup.abstract_batch(model.batch_shapes(c.train.batch_size))
    if step == "train":
      lowered = make_train_step(setup).lower(state, batch)
    else:
      lowered = make_eval_step(setup).lower(state["params"], batch)
    module = lowered.compiler_ir("hlo").as_hlo_module()
    cost = xla_client._xla.hlo_module_cost_analysis  # pylint: disable=protected-access
    return cost(cpu.client, module)["flops"]

  base = count([1] * len(fields))
  total = base
  for i, n in enumerate(depth):
    one_more = [1] * len(fields)
    one_more[i] = 2
    total += (n - 1) * (count(one_more) - base)
  return total


def analytic_flops(prep: Prepared, step: str) -> float:
  """The model's own count per step (`flops_per_token`: training = 3x the forward pass)."""
  train = prep.model.flops_per_token() * prep.units_per_step
  return train if step == "train" else train / 3


@dataclasses.dataclass
class Bound:
  """A lower bound on the step time from the compiled program and the chip's published
  peaks: max(FLOPs / peak FLOP/s, bytes that must move / HBM bandwidth)."""
  compute_s: float
  memory_s: float
  mfu: float               # the model's FLOPs over (devices x peak x that step time)
  tokens_per_s_host: float
  rows_per_s_host: float

  @property
  def step_s(self) -> float:
    return max(self.compute_s, self.memory_s)


def min_bytes(prep: Prepared, compiled: Compiled) -> float:
  """Bytes a step must move per device at least: what the compiled program's cost analysis
  counts (each loop body once: a lower bound; TPU only), and reading and writing the train
  state (an evaluation step reads the parameters) plus the batch."""
  state = (2 * (prep.params_bytes + prep.opt_bytes) if compiled.step == "train"
           else prep.params_bytes)
  return max(compiled.bytes_raw or 0.0, state + prep.batch_bytes)


def bound(prep: Prepared, compiled: Compiled, xla_flops: float) -> Bound:
  """`xla_flops`: FLOPs per global step (`step_flops`)."""
  t, chip = prep.target, prep.target.chip
  compute = xla_flops / t.num_devices / chip.peak_bf16_flops
  memory = min_bytes(prep, compiled) / chip.hbm_bytes_per_s
  step_s = max(compute, memory)
  rows = prep.cfg.train.batch_size / step_s / t.num_hosts
  # Capped: where XLA does fewer FLOPs than the model's count (causal attention skipping the
  # masked blocks), the ratio would pass 100 %.
  mfu = min(1.0, analytic_flops(prep, compiled.step)
            / (t.num_devices * chip.peak_bf16_flops * step_s))
  return Bound(compute, memory, mfu, rows * prep.row_tokens, rows)
