"""Ahead-of-time targets: the accelerator names users type (`v5e-256`, `v4-32`, `2xv5e-256`,
`h100x8`, `2xh100x8`) mapped to `jax.experimental.topologies.get_topology_desc` arguments,
with each chip's published HBM, peak bf16 FLOP/s and HBM bandwidth.

TPU product names follow Cloud TPU (and MaxText's accelerator_to_spec_map.py): v4 and v5p
names count TensorCores, two per chip, and a chip is one (megacore) JAX device, so v4-8 is 4
devices; v5e and v6e names count chips. GPU targets are one topology of `hosts x 1 x gpus`
compiled against an XLA `GpuTargetConfigProto` shipped in common/aot_targets/*.txtpb.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
from typing import Any, Iterator

GIB = 1024 ** 3
SPEC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "aot_targets")


# Remat policies from the most activation memory kept to the least.
REMAT_LADDER = ("none", "dots", "dots_no_batch", "full")


def gib(x: float) -> str:
  """Bytes as GiB (MiB below 0.1 GiB, where two decimals of GiB say nothing)."""
  return f"{x / GIB:,.2f} GiB" if abs(x) >= 0.1 * GIB else f"{x / 2 ** 20:,.2f} MiB"


@dataclasses.dataclass(frozen=True)
class Chip:
  """One JAX device of a target; figures per device (a v4/v5p megacore chip, one GPU)."""
  name: str
  hbm_bytes: float
  peak_bf16_flops: float
  hbm_bytes_per_s: float
  spec_file: str = ""   # GPUs: the GpuTargetConfigProto in SPEC_DIR

  @property
  def target_config(self) -> str:
    with open(os.path.join(SPEC_DIR, self.spec_file)) as f:
      return f.read()


# Sources: cloud.google.com/tpu/docs/{v4,v5e,v5p,v6e} ("System architecture": peak bf16
# compute, HBM capacity and bandwidth per chip; hosts hold 4 chips, the single-host v5e-8 /
# v6e-8 hold 8: `chips_per_host_bounds` below); NVIDIA H100, H200 and A100 datasheets (dense
# bf16 Tensor Core FLOP/s, i.e. half the with-sparsity figure). GPU memory and bandwidth come
# from the target's .txtpb (XLA's published specs; the H200's from a real H200's properties).
TPU_CHIPS = {
    "v4": Chip("TPU v4", 32 * GIB, 275e12, 1200e9),
    "v5e": Chip("TPU v5e", 16 * GIB, 197e12, 819e9),
    "v5p": Chip("TPU v5p", 95 * GIB, 459e12, 2765e9),
    "v6e": Chip("TPU v6e", 32 * GIB, 918e12, 1640e9),
}
GPU_PEAK_BF16 = {"h100": 989e12, "h200": 989e12, "a100": 312e12}
GPU_SPECS = {"h100": "h100_sxm.txtpb", "h200": "h200_sxm.txtpb", "a100": "a100_sxm_80gb.txtpb"}
# Row positions per second one CPU core of the host builds with the family's training pipeline
# (tokenize, pack, BERT masking, T5 span corruption) at the base presets' row lengths:
# `PYTHONPATH=. python benchmarks/pipeline_throughput.py --workers 0,1,2 --seconds 6
# --trials 1`, a 2-core x86 VM with its cores shared by two training jobs, 2026-12-04 (GPT
# 92.6k, BERT 46.1k, T5 88.9k in the training process); an idle core builds more, so the
# cores a target needs (`input_cores`) err high.
PIPELINE_TOKENS_PER_CORE = {"gpt": 92_600, "bert": 46_100, "t5": 88_900}
# v5e / v6e slice shapes (chips -> topology), as Cloud TPU and MaxText lay them out.
_PLANAR = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
           256: "16x16"}
_SMALL_CUBES = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4)}
_MAX_CORES = {"v4": 4096, "v5p": 17920}   # the largest published slices
_TPU_RE = re.compile(r"(?:(\d+)x)?(v4|v5p|v5e|v5litepod|v6e)-(\d+)")
_GPU_RE = re.compile(r"(?:(\d+)x)?(h100|h200|a100)x(\d+)")
PATTERNS = ("v4-N (N = TensorCores: 8, 16, 32, ... 4096)", "v5p-N (TensorCores: 8 ... 17920)",
            "v5e-N or v5litepod-N (chips: 1, 4, 8, 16, 32, 64, 128, 256)",
            "v6e-N (chips: 1, 4, 8, ... 256)", "MxNAME for M slices (2xv5e-256)",
            "h100xG, h200xG, a100xG (G GPUs on one host, 1-8)", "Mxh100xG (M hosts: 2xh100x8)")
DOCUMENTED = ("v4-8", "v4-32", "v4-4096", "v5e-1", "v5e-4", "v5e-8", "v5e-256", "v5litepod-16",
              "v5p-8", "v5p-64", "v5p-12288", "v6e-1", "v6e-256", "2xv5e-256", "h100x8",
              "h200x8", "a100x8", "h200x1", "2xh100x8")


@dataclasses.dataclass(frozen=True)
class Target:
  """A TPU slice (or several) or GPU host(s): its devices, hosts and per-device chip."""
  name: str
  platform: str          # "tpu" or "cuda"
  chip: Chip
  num_devices: int
  num_hosts: int
  num_slices: int
  topology: dict[str, Any]   # get_topology_desc keyword arguments
  accelerator_type: str = ""   # the Cloud TPU name of one slice, as libtpu expects it

  @property
  def devices_per_host(self) -> int:
    return self.num_devices // self.num_hosts

  def devices(self) -> list[Any]:
    """The target's devices, described by libtpu or the CUDA plugin (no accelerator needed)."""
    # libtpu otherwise asks a metadata server for the TPU it runs on (and logs errors), and
    # locks /tmp/libtpu_lockfile, refusing a second process that describes a topology.
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    if self.accelerator_type:
      os.environ.setdefault("TPU_ACCELERATOR_TYPE", self.accelerator_type)
    from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
    devs = list(topologies.get_topology_desc(platform=self.platform, **self.topology).devices)
    if len(devs) != self.num_devices:
      raise ValueError(f"target {self.name}: the plugin described {len(devs)} devices, expected "
                       f"{self.num_devices}")
    return devs

  @property
  def cudnn_version(self) -> int:
    """cuDNN version the target config names (major*10000 + minor*100 + patch), or 0."""
    block = re.search(r"dnn_version_info\s*\{([^}]*)\}", self.chip.target_config) if (
        self.platform == "cuda") else None
    if not block:
      return 0
    version = 0
    for key, scale in (("major", 10000), ("minor", 100), ("patch", 1)):
      m = re.search(rf"{key}:\s*(\d+)", block[1])
      version += int(m[1]) * scale if m else 0
    return version


def _cube(chips: int) -> tuple[int, int, int] | None:
  """v4 / v5p slice shape for `chips`: small slices as published, from 64 chips on dimensions
  that are multiples of 4, the most cube-like (smallest longest side, then largest shortest),
  which reproduces the published shapes (4x4x20 for v5p-640, 8x8x16 for v4-2048)."""
  if chips in _SMALL_CUBES:
    return _SMALL_CUBES[chips]
  if chips < 64 or chips % 64:
    return None
  best = None
  for a in range(4, round(chips ** (1 / 3)) + 1, 4):
    for b in range(a, math.isqrt(chips // a) + 1, 4):
      c, rem = divmod(chips, a * b)
      if rem == 0 and c % 4 == 0 and c >= b and (best is None or (c, -a) < (best[2], -best[0])):
        best = (a, b, c)
  return best


def _tpu(name: str, slices: int, family: str, n: int) -> Target:
  family = "v5e" if family == "v5litepod" else family
  chip = TPU_CHIPS[family]
  if family in ("v4", "v5p"):
    shape = _cube(n // 2) if n % 2 == 0 else None
    if shape is None or n > _MAX_CORES[family]:
      raise _bad(name, f"{family}-N counts TensorCores (2 per chip): N = 8, 16, 32, 64 or a "
                       f"multiple of 128 up to {_MAX_CORES[family]}")
    chips = n // 2
    prefix = "v5" if family == "v5p" else family   # libtpu's name for v5p
    topo = dict(topology_name=f"{prefix}:" + "x".join(map(str, shape)),
                chip_config_name="megacore", chips_per_host_bounds=(2, 2, 1),
                wrap=(chips >= 64,) * 3)
  else:
    if n not in _PLANAR:
      raise _bad(name, f"{family}-N takes N in {', '.join(map(str, _PLANAR))}")
    chips = n
    per_host = (1, 1, 1) if n == 1 else (2, 4, 1) if n == 8 else (2, 2, 1)
    topo = dict(topology_name=f"{family}:{_PLANAR[n]}", chips_per_host_bounds=per_host,
                wrap=(n == 256, n >= 128, False))
  hosts = max(1, chips // math.prod(topo["chips_per_host_bounds"]))
  if slices > 1:
    topo["num_slices"] = slices
  accelerator = f"{'v5litepod' if family == 'v5e' else family}-{n}"
  return Target(name, "tpu", chip, chips * slices, hosts * slices, slices, topo, accelerator)


def resolve(name: str) -> Target:
  """A target by the name users type; a bad name is one error listing the valid patterns."""
  key = name.strip().lower()
  if m := _TPU_RE.fullmatch(key):
    if int(m[1] or 1) >= 1:
      return _tpu(name, int(m[1] or 1), m[2], int(m[3]))
  if m := _GPU_RE.fullmatch(key):
    hosts, kind, gpus = int(m[1] or 1), m[2], int(m[3])
    if hosts >= 1 and 1 <= gpus <= 8:
      chip = _gpu_chip(kind)
      topo = dict(topology_name="gpu", topology=f"{hosts}x1x{gpus}",
                  target_config=chip.target_config)
      return Target(name, "cuda", chip, hosts * gpus, hosts, 1, topo)
  raise _bad(name)


def _bad(name: str, why: str = "") -> ValueError:
  """One line: the name, what is wrong with it, the valid patterns."""
  return ValueError(f"unknown target {name!r}{': ' + why if why else ''}; valid: "
                    f"{'; '.join(PATTERNS)}")


def _gpu_chip(kind: str) -> Chip:
  """GPU figures: memory and bandwidth as XLA's spec states them, peak from the datasheet."""
  spec = GPU_SPECS[kind]
  with open(os.path.join(SPEC_DIR, spec)) as f:
    text = f.read()
  field = lambda k: float(re.search(rf"{k}:\s*([\d.]+)", text)[1])
  return Chip(kind.upper(), field("device_memory_size"), GPU_PEAK_BF16[kind],
              field("memory_bandwidth"), spec)


@contextlib.contextmanager
def target_context(target: Target) -> Iterator[None]:
  """What tracing and compiling for `target` on a CPU host needs, for the duration:

  - GPU: `jax.nn.dot_product_attention(implementation="cudnn")` asks the host's cuDNN for its
    version and the local GPU for its compute capability; both are the target's here.
  (Multi-slice meshes are the partitioner's business: common/partitioning.py.)
  """
  with contextlib.ExitStack() as stack:
    if target.platform == "cuda":
      # pylint: disable-next=g-import-not-at-top
      from jax._src.cudnn import fused_attention_stablehlo as fa
      cc = re.search(r"cuda_compute_capability\s*\{\s*major:\s*(\d+)(?:\s*minor:\s*(\d+))?",
                     target.chip.target_config)
      capability = float(f"{cc[1]}.{cc[2] or 0}")
      stack.enter_context(_patched(fa, "check_cudnn_version", lambda: target.cudnn_version))
      stack.enter_context(_patched(fa, "check_compute_capability",
                                   lambda c: capability >= float(c)))
    yield


@contextlib.contextmanager
def _patched(module: Any, attr: str, value: Any) -> Iterator[None]:
  old = getattr(module, attr)
  setattr(module, attr, value)
  try:
    yield
  finally:
    setattr(module, attr, old)


def input_cores(family: str, tokens_per_s_host: float) -> int:
  """CPU cores a host's input pipeline needs to build `tokens_per_s_host` (data.num_workers
  spreads the rows over that many processes)."""
  return max(1, math.ceil(tokens_per_s_host / PIPELINE_TOKENS_PER_CORE[family]))
