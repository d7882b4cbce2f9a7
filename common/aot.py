"""Will my preset fit before I rent the slice? Ahead-of-time compilation on a CPU machine:

  python -m common.aot --config=configs/gpt.py:1.5b --target=v5e-256 [--config.a.b=v ...]

compiles the training step (and the evaluation step) for a TPU slice or GPU host(s) through
exactly the code training runs (the trainer's setup, partitioner and step functions), then
reports per device: the parameter and optimizer bytes (from the shard shapes, before
compiling), the compiled program's argument / output / temporary / peak bytes against the
target's HBM, the FLOPs per step beside the model's own count, the compile time, a lower bound
on the step time and what the input pipeline would have to deliver at it, and one verdict.
Exit status: 0 fits; 3 does not fit (one line on stderr: by how much, the largest consumers,
what to change); 2 bad input. `--plan` ranks mesh / rules / remat / accumulation choices
(common/aot_plan.py). Targets: common/aot_targets.py; the runbook: docs/aot.md.
"""

from __future__ import annotations

import functools
import math
import re
import sys

import jax
from absl import flags
from ml_collections import ConfigDict, config_flags

from common import cli
from common import config as config_lib
from common.aot_compile import (STEPS, Compiled, Prepared, analytic_flops, bound, compile_step,
                                family_of, min_bytes, prepare, step_flops)
from common.aot_targets import (GIB, PIPELINE_TOKENS_PER_CORE, REMAT_LADDER, gib, input_cores,
                                 resolve)
from common.partitioning import Partitioner

EXIT_DOES_NOT_FIT = 3
class DoesNotFit(Exception):
  """One line: by how much, the largest consumers, what to change."""


def ms(seconds: float) -> str:
  return f"{seconds * 1e3:,.1f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:,.1f} us"


def describe(prep: Prepared, hbm: float) -> list[str]:
  """Target, layout and the state bytes per device (known before compiling)."""
  t, p, c = prep.target, prep.partitioner, prep.cfg
  sizes = " ".join(f"{k}={v}" for k, v in p.shape.items())
  if p.fsdp_split > 1:
    sizes += f" (fsdp laid out as {p.sizes[1] // p.fsdp_split} x fsdp_sub {p.fsdp_split})"
  params = sum(x.size for x in jax.tree.leaves(prep.setup.abstract_state["params"]))
  lines = [
      f"target {t.name}: {t.num_devices} x {t.chip.name}, {t.num_hosts} host(s) x "
      f"{t.devices_per_host} devices, {t.num_slices} slice(s); per device {gib(hbm)} HBM, "
      f"{t.chip.peak_bf16_flops / 1e12:,.0f} TFLOP/s bf16, "
      f"{t.chip.hbm_bytes_per_s / 1e9:,.0f} GB/s",
      f"model {prep.family}: {params / 1e6:,.1f}M parameters, dtype {c.model.dtype}, remat "
      f"{c.model.get('remat_policy', 'none')}, batch {c.train.batch_size} rows x "
      f"{prep.row_tokens} tokens, grad_accum_steps {c.train.grad_accum_steps}",
      f"mesh {sizes}, rules {p.rules_name}; {p.num_processes} process(es)",
      f"state per device (shard shapes, before compiling): params {gib(prep.params_bytes)}, "
      f"optimizer {gib(prep.opt_bytes)}, batch {gib(prep.batch_bytes)}"]
  for r in p.replicated:
    why = "small parameter, allowed" if r.small else "mesh.allow_partial_sharding"
    lines.append(f"sharded fewer ways than the rules say ({why}): {r}")
  return lines


def report_step(prep: Prepared, c: Compiled, hbm: float) -> list[str]:
  """The compiled step's memory, FLOPs and step-time bound."""
  if c.oom:
    first = c.oom.strip().splitlines()[0]
    return [f"{c.step} step: compiler out of memory after {c.compile_s:.0f} s: {first[:300]}"]
  lines = [f"{c.step} step: compiled in {c.compile_s:.1f} s; per device: arguments "
           f"{gib(c.argument)}, outputs {gib(c.output)} ({gib(c.alias)} aliased), temporaries "
           f"{gib(c.temp)}, peak {gib(c.peak)} of {gib(hbm)} HBM ({c.peak / hbm:.0%})"]
  xla = step_flops(prep.family, prep.cfg, c.step)
  model = analytic_flops(prep, c.step)
  raw = (f"; the compiled program's own count {c.flops_raw:.3g}/device (loop bodies once)"
         if c.flops_raw else "")
  lines.append(f"  FLOPs/step: XLA {xla:.4g} vs model {model:.4g}: ratio {xla / model:.2f} "
               f"(remat recompute; ops the model's count leaves out){raw}")
  b = bound(prep, c, xla)
  moved = gib(min_bytes(prep, c))
  lines.append(f"  step >= {ms(b.step_s)} (compute {ms(b.compute_s)}, HBM {ms(b.memory_s)} for "
               f">= {moved}) -> MFU <= "
               f"{b.mfu:.0%}; at that bound each host must feed {b.tokens_per_s_host:,.0f} "
               f"tokens/s ({b.rows_per_s_host:,.1f} rows/s)")
  cores = input_cores(prep.family, b.tokens_per_s_host)
  per_core = PIPELINE_TOKENS_PER_CORE[prep.family]
  lines.append(f"  input: ~{cores} CPU core(s) per host at {per_core:,} tokens/s per core "
               f"(benchmarks/pipeline_throughput.py): --config.data.num_workers={cores}")
  return lines


def _required(c: Compiled) -> tuple[float, str]:
  """Bytes per device the step needs, and how the compiler put it."""
  if c.oom:
    m = re.search(r"\(([\d.]+)([KMGT])\) exceeds", c.oom)
    scale = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}
    return (float(m[1]) * scale[m[2]] if m else float("nan")), "temporaries alone"
  return c.peak, "peak"


def does_not_fit(prep: Prepared, c: Compiled, hbm: float) -> str:
  """The one line for a step over the target's HBM."""
  need, what = _required(c)
  over = need - hbm
  consumers = sorted([("temporaries (activations, gradients)", c.temp or need),
                      ("optimizer state", prep.opt_bytes), ("params", prep.params_bytes)],
                     key=lambda kv: -kv[1])
  largest = ", ".join(f"{name} {gib(size)}" for name, size in consumers if size)
  return (f"does not fit: the {c.step} step on {prep.target.name} needs {gib(need)} per device "
          f"({what}) of {gib(hbm)} HBM, {gib(over)} over; largest: {largest}; change: "
          + "; ".join(advice(prep, need / hbm, consumers[0][0].startswith("temp"), c.step)))


def advice(prep: Prepared, factor: float, activations: bool, step: str) -> list[str]:
  """What to change, most promising first, as the flags that change it (remat and gradient
  accumulation only shrink a training step)."""
  c, p = prep.cfg, prep.partitioner
  out = []
  state_fix = (f"--config.mesh.fsdp=-1 --config.mesh.data=1 (shard the state over all "
               f"{prep.target.num_devices} devices)" if p.sizes[1] < prep.target.num_devices
               else "a target with more devices or more HBM per device")
  if not activations:
    out.append(state_fix)
  policy = c.model.get("remat_policy", "none")
  if policy != "full" and step == "train":
    stronger = REMAT_LADDER[max(REMAT_LADDER.index(policy) + 1, 2)]
    out.append(f"--config.model.remat_policy={stronger} (now {policy})")
  accum = c.train.grad_accum_steps
  rows = c.train.batch_size // p.num_data   # per device, per step
  fits = [a for a in (2, 4, 8, 16, 32, 64) if rows % (a * accum) == 0]
  if fits and step == "train":
    more = next((a for a in fits if a >= factor), fits[-1])
    out.append(f"--config.train.grad_accum_steps={more * accum} (now {accum}: the same batch "
               f"in microbatches of {rows // (more * accum)} rows per device)")
  out.append(f"--config.train.batch_size={_smaller_batch(c.train.batch_size, factor, p, accum)}"
             f" (now {c.train.batch_size})")
  if activations:
    out.append(state_fix)
  return out


def _smaller_batch(batch: int, factor: float, p: Partitioner, accum: int) -> int:
  """Halvings of the batch down to 1/factor of it, while the mesh still divides it."""
  unit = p.num_data * accum * p.num_processes // math.gcd(p.num_data * accum, p.num_processes)
  while factor > 1 and batch % 2 == 0 and (batch // 2) % unit == 0:
    batch //= 2
    factor /= 2
  return batch


def run(spec: str, cfg: ConfigDict, target_name: str, steps: list[str], *,
        hbm_gib: float = 0.0, serialize: str | None = None) -> str:
  """Compiles `steps` for the target, prints the report as it goes and returns the verdict
  line; a step over the HBM raises DoesNotFit with its one line."""
  target = resolve(target_name)
  if not steps or set(steps) - set(STEPS):
    raise ValueError(f"--steps={','.join(steps)}: valid steps are {', '.join(STEPS)}")
  hbm = hbm_gib * GIB if hbm_gib else target.chip.hbm_bytes
  prep = prepare(family_of(spec), cfg, target)
  _emit(describe(prep, hbm))
  failures, peaks = [], []
  for step in steps:
    c = compile_step(prep, step, serialize)
    _emit(report_step(prep, c, hbm))
    need = _required(c)[0]
    if c.oom or need > hbm:
      failures.append(does_not_fit(prep, c, hbm))
    peaks.append((need, step))
  if failures:
    raise DoesNotFit(failures[0])
  need, step = max(peaks)
  return (f"verdict: fits on {target.name}: peak {gib(need)} per device ({step} step) of "
          f"{gib(hbm)} HBM, {gib(hbm - need)} to spare")


def _emit(lines: list[str]) -> None:
  for line in lines:
    print(line, flush=True)


def define_flags(holder: list) -> None:
  holder.append(config_flags.DEFINE_config_file(
      "config", None, "configs/<family>.py:<preset> to compile", lock_config=True))
  flags.DEFINE_string("target", None, "v5e-256, v4-32, v5p-64, 2xv5e-256, h100x8, h200x1, "
                      "2xh100x8, ... (common/aot_targets.py)")
  flags.DEFINE_list("steps", list(STEPS), "Steps to compile: train, eval.")
  flags.DEFINE_string("serialize", None, "Directory to write the compiled executables to "
                      "({train,eval}_step.pkl).")
  flags.DEFINE_float("hbm_gib", 0.0, "Memory per device to fit in, GiB (default: the "
                     "target's HBM; less leaves headroom).")
  flags.DEFINE_bool("plan", False, "Rank mesh / rules / remat / grad-accumulation choices for "
                    "the target instead (common/aot_plan.py).")
  flags.DEFINE_integer("max_compiles", 4, "--plan: compile at most this many candidates.")


def main(holder: list) -> None:
  f = flags.FLAGS
  jax.config.update("jax_platforms", "cpu")   # the target's devices are described, not used
  spec = config_flags.get_config_filename(f["config"])
  if not f.target:
    raise ValueError("--target is required, e.g. --target=v5e-256 or --target=h100x8")
  if f.plan:
    from common import aot_plan  # pylint: disable=g-import-not-at-top
    aot_plan.plan(spec, holder[0].value, f.target, max_compiles=f.max_compiles,
                  hbm_gib=f.hbm_gib)
    return
  try:
    print(run(spec, holder[0].value, f.target, f.steps, hbm_gib=f.hbm_gib,
              serialize=f.serialize), flush=True)
  except DoesNotFit as e:
    print(e, file=sys.stderr, flush=True)
    sys.exit(EXIT_DOES_NOT_FIT)


def _check_argv(argv: list[str]) -> None:
  if not any(a.startswith("--config=") for a in argv[1:]):
    raise ValueError("--config=configs/<family>.py:<preset> is required")
  config_lib.check_overrides(argv, "")


def cli_main() -> None:
  """`python -m common.aot` / `flax-pretrain-aot`."""
  holder: list = []
  cli.run(functools.partial(main, holder), functools.partial(define_flags, holder),
          argv_check=_check_argv)


if __name__ == "__main__":
  cli_main()
