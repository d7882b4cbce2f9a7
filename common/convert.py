"""Hugging Face <-> flax-pretrain weights: shared converter machinery and its command line.

  python -m common.convert --hf_dir=HF_MODEL_DIR --workdir=DIR [--preset=P] [--scan_layers=false]
  python -m common.convert --workdir=DIR --export_to=HF_MODEL_DIR [--step=N]

Import reads a local Hugging Face model directory (config.json + model.safetensors, sharded
safetensors or a PyTorch `pytorch_model.bin` state_dict; never the network) and writes a work dir
that fine-tuning (`trainer.train(init_params_from=DIR)`) and inference load with
`common.checkpoint.load_params`: config.json (the family preset with the HF shapes),
hf_config.json (the source config, reused on export), vocab/ (the source tokenizer) and an Orbax
checkpoint `checkpoints/<step>/` holding `params` and `meta` (no optimizer state: it is not a
run to resume). Export writes config.json + model.safetensors (+ the tokenizer) back.

A family maps tensors in `<family>/hf.py` (a `Family`) between Hugging Face names and our
*canonical* names: the parameter path joined by '/', each LayerStack layer under its own index
('layers/layers/3/attn/query/kernel'), which is the unscanned layout. This module stacks and
unstacks scanned stacks, pads or trims the vocab axis, and checks that every tensor is present,
has the shape config.json implies, and is used.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import os
import re
from typing import Any, Callable

import jax
import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags
from flax import nnx
from ml_collections import ConfigDict

from common import config as config_lib
from common import entry
from common.checkpoint import Checkpointer, load_params, resolve_checkpoint
from common.transformer import LayerStack

# Modules defining a `FAMILY`; a family whose package has not landed is skipped.
FAMILY_MODULES = ("gpt_flax.hf", "bert_flax.hf", "t5x_lite.hf")
HF_CONFIG_FILE = "hf_config.json"  # the source config.json, kept in the work dir for export


@dataclasses.dataclass(frozen=True)
class Family:
  """How one model family converts. Canonical params: {'a/b/0/c': array} (see module doc)."""
  name: str                          # configs/<name>.py and the identity's family
  model_type: str                    # HF config model_type
  architectures: tuple[str, ...]     # HF architectures it imports (the first when config.json
                                     # names none)
  default_preset: str
  # (HF config.json, its tensors) -> {'model.x': value, ...} overrides of the preset; raises on
  # math this family does not implement. May look at tensors (e.g. is a head tied?).
  config_overrides: Callable[[dict, "Tensors"], dict]
  # (config, HF architecture, checkpoint identity or None when importing) -> our Model.
  make_model: Callable[[ConfigDict, str, dict | None], Any]
  # Our model identity (checkpoint meta) -> the HF architecture it exports as; None: not ours.
  architecture_of: Callable[[dict], str | None]
  # (HF config, our Model, tensors) -> canonical params with the HF vocab size.
  import_tensors: Callable[[dict, Any, "Tensors"], dict[str, np.ndarray]]
  # (our Model, canonical params) -> HF state dict (what save_pretrained writes).
  export_tensors: Callable[[Any, dict[str, np.ndarray]], dict[str, np.ndarray]]
  # (our Model, source HF config or {}, canonical params, vocab or None) -> config.json.
  hf_config: Callable[[Any, dict, dict[str, np.ndarray], Any], dict]
  ignored: tuple[str, ...] = ()      # regexes of HF tensors that hold no weights (buffers)
  # The body's prefix in task-model checkpoints ('transformer.'); checkpoints saved from the
  # bare body (the hub's gpt2) lack it, and transformers adds it on load, as do we.
  base_prefix: str = ""
  sp_tokenizer_class: str | None = None  # HF class that reads an exported spiece.model


# --------------------------------------------------------------------------- reading HF files


class Tensors:
  """A Hugging Face state dict that records what was read, so misses and leftovers are errors."""

  def __init__(self, arrays: dict[str, np.ndarray], where: str):
    # Old TF-converted checkpoints (e.g. the original bert-base-*) name LayerNorm parameters
    # gamma/beta; transformers renames them on load, and so do we.
    renamed = {re.sub(r"(LayerNorm)\.gamma$", r"\1.weight",
                      re.sub(r"(LayerNorm)\.beta$", r"\1.bias", k)): v for k, v in arrays.items()}
    self.arrays = renamed if len(renamed) == len(arrays) else arrays
    self.where, self.used = where, set()

  def __contains__(self, name: str) -> bool:
    return name in self.arrays

  def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The tensor `name`, which config.json says has `shape`."""
    if name not in self.arrays:
      raise ValueError(f"{self.where} has no tensor '{name}' (a weight this config.json needs)")
    a = self.arrays[name]
    if tuple(a.shape) != tuple(shape):
      raise ValueError(f"{self.where}: tensor '{name}' has shape {tuple(a.shape)} but "
                       f"config.json implies {tuple(shape)}")
    self.used.add(name)
    return a

  def unused(self, ignored: tuple[str, ...]) -> list[str]:
    return sorted(k for k in self.arrays.keys() - self.used
                  if not any(re.fullmatch(p, k) for p in ignored))


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                       "BF16": ml_dtypes.bfloat16, "I64": np.int64, "I32": np.int32,
                       "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  """All tensors of one file; floats come back as fp32 (bf16 included, without torch)."""
  with open(path, "rb") as f:
    n = int.from_bytes(f.read(8), "little")
    header = json.loads(f.read(n))
  data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)  # read tensor by tensor
  out = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
    if dtype is None:
      raise ValueError(f"{path}: tensor '{name}' has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    a = data[start:end].view(dtype).reshape(info["shape"])
    out[name] = a.astype(np.float32) if info["dtype"].startswith(("F", "BF")) else np.array(a)
  return out


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError(f"{path} is a PyTorch state_dict; reading it needs torch (pip install torch) "
                     "or convert it to safetensors") from e
  sd = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(sd, dict):
    raise ValueError(f"{path} holds a {type(sd).__name__}, not a state_dict")
  return {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in sd.items()}


def read_hf_config(hf_dir: str) -> dict:
  path = os.path.join(hf_dir, "config.json")
  if not os.path.isdir(hf_dir):
    raise FileNotFoundError(f"Hugging Face model directory {hf_dir} not found")
  if not os.path.isfile(path):
    raise ValueError(f"{hf_dir} is not a Hugging Face model directory: it has no config.json")
  with open(path) as f:
    return json.load(f)


def read_hf_weights(hf_dir: str) -> dict[str, np.ndarray]:
  """model.safetensors, its sharded index, or pytorch_model.bin (or its index), in that order."""
  for index, reader in (("model.safetensors.index.json", _read_safetensors),
                        ("pytorch_model.bin.index.json", _read_torch)):
    path = os.path.join(hf_dir, index)
    if os.path.isfile(path):
      with open(path) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
      out = {}
      for name in files:
        out.update(reader(os.path.join(hf_dir, name)))
      return out
  for name, reader in (("model.safetensors", _read_safetensors),
                       ("pytorch_model.bin", _read_torch)):
    path = os.path.join(hf_dir, name)
    if os.path.isfile(path):
      return reader(path)
  raise ValueError(f"{hf_dir} has no weights: expected model.safetensors, "
                   "model.safetensors.index.json or pytorch_model.bin")


def families() -> list[Family]:
  out = []
  for module in FAMILY_MODULES:
    try:
      out.append(importlib.import_module(module).FAMILY)
    except ModuleNotFoundError as e:  # that family's package is not (fully) there
      if not (e.name or "").startswith(module.split(".")[0]):
        raise
  return out


def family_for(hf_cfg: dict, where: str) -> tuple[Family, str]:
  """(family, architecture) for an HF config; a clear error for anything unsupported."""
  supported = {a: f for f in families() for a in f.architectures}
  archs = hf_cfg.get("architectures") or []
  for arch in archs:
    if arch in supported:
      return supported[arch], arch
  for fam in families():
    if not archs and hf_cfg.get("model_type") == fam.model_type:
      return fam, fam.architectures[0]
  raise ValueError(f"{where} holds a {hf_cfg.get('model_type')!r} model with architectures "
                   f"{archs}; supported: {', '.join(sorted(supported))}")


def preset_config(family: Family, preset: str | None) -> ConfigDict:
  spec = os.path.join(config_lib.CONFIG_DIR, f"{family.name}.py:{preset or family.default_preset}")
  return config_lib.load_config_file(spec)


# --------------------------------------------------------------------------- parameter layout


def abstract_network(model: Any) -> nnx.Module:
  with nnx.use_eager_sharding(False):
    return nnx.eval_shape(lambda: model.make_network(nnx.Rngs(params=0)))


def _stacks(net: nnx.Module) -> dict[tuple, LayerStack]:
  return {tuple(p): m for p, m in nnx.iter_graph(net) if isinstance(m, LayerStack)}


def _leaves(net: nnx.Module):
  """(path, shape, logical names, scanned stack or None) for every parameter of `net`."""
  stacks = _stacks(net)
  for path, var in nnx.to_flat_state(nnx.state(net, nnx.Param)):
    names = tuple(var.get_metadata().get("out_sharding") or (None,) * len(var.shape))
    stack = next((s for s, m in stacks.items()
                  if m.scan and path[:len(s) + 1] == s + ("layers",)), None)
    yield tuple(path), tuple(var.shape), names, stack


def _canonical(path: tuple, stack: tuple | None, i: int | None = None) -> str:
  if stack is None:
    return "/".join(str(p) for p in path)
  return "/".join(str(p) for p in path[:len(stack) + 1] + (i,) + path[len(stack) + 1:])


def _fit_vocab(a: np.ndarray, shape: tuple[int, ...], names: tuple, key: str) -> np.ndarray:
  """Zero-pads the `vocab` axis up to the network's (--vocab_multiple); others must match."""
  if a.shape == shape:
    return a
  if "vocab" in names and a.ndim == len(shape):
    ax = names.index("vocab")
    if a.shape[ax] < shape[ax] and all(
        x == y for d, (x, y) in enumerate(zip(a.shape, shape)) if d != ax):
      pad = [(0, 0)] * a.ndim
      pad[ax] = (0, shape[ax] - a.shape[ax])
      return np.pad(a, pad)
  raise ValueError(f"parameter {key} has shape {a.shape}, the network needs {shape}")


def to_params(net: nnx.Module, canonical: dict[str, np.ndarray]) -> dict:
  """Canonical params -> the network's pure-dict params (scanned stacks stacked)."""
  flat, seen = {}, set()
  for path, shape, names, stack in _leaves(net):
    if stack is None:
      key = _canonical(path, None)
      if key not in canonical:
        raise ValueError(f"conversion produced no value for parameter {key}")
      flat[path] = _fit_vocab(np.asarray(canonical[key], np.float32), shape, names, key)
      seen.add(key)
    else:
      n = shape[0]
      keys = [_canonical(path, stack, i) for i in range(n)]
      absent = [k for k in keys if k not in canonical]
      if absent:
        raise ValueError(f"conversion produced no value for parameter {absent[0]}")
      layers = [_fit_vocab(np.asarray(canonical[k], np.float32), shape[1:], names[1:], k)
                for k in keys]
      flat[path] = np.stack(layers)
      seen.update(keys)
  extra = sorted(canonical.keys() - seen)
  if extra:
    raise ValueError(f"conversion produced parameters the network lacks: {extra[:5]}")
  return _unflatten(flat)


def from_params(net: nnx.Module, params: dict) -> dict[str, np.ndarray]:
  """The network's pure-dict params -> canonical params (scanned stacks split per layer)."""
  values = {tuple(str(getattr(k, "key", k)) for k in p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  out = {}
  for path, _, _, stack in _leaves(net):
    a = values[tuple(str(p) for p in path)]
    if stack is None:
      out[_canonical(path, None)] = a
    else:
      out.update({_canonical(path, stack, i): a[i] for i in range(a.shape[0])})
  return out


def _unflatten(flat: dict[tuple, Any]) -> dict:
  tree: dict = {}
  for path, v in flat.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return tree


# --------------------------------------------------------------------------- import / export


def resolved_config(family: Family, hf_cfg: dict, tensors: Tensors, *, preset: str | None = None,
                    scan_layers: bool | None = None, vocab_multiple: int = 1) -> ConfigDict:
  """The family preset with the HF model's shapes (vocab optionally padded to a multiple)."""
  if vocab_multiple < 1:
    raise ValueError(f"vocab_multiple must be >= 1, got {vocab_multiple}")
  overrides = dict(family.config_overrides(hf_cfg, tensors))
  v = overrides["model.vocab_size"]
  overrides["model.vocab_size"] = -(-v // vocab_multiple) * vocab_multiple
  if scan_layers is not None:
    overrides["model.scan_layers"] = bool(scan_layers)
  return config_lib.apply_overrides(preset_config(family, preset), overrides)


def import_hf(hf_dir: str, workdir: str, *, preset: str | None = None,
              scan_layers: bool | None = None, vocab_multiple: int = 1) -> ConfigDict:
  """Converts a local HF model directory into a work dir (see module doc); returns the config."""
  hf_dir = os.path.abspath(os.path.expanduser(hf_dir))
  workdir = os.path.abspath(os.path.expanduser(workdir))
  hf_cfg = read_hf_config(hf_dir)
  family, arch = family_for(hf_cfg, hf_dir)
  if os.path.isdir(os.path.join(workdir, "checkpoints")) and os.listdir(
      os.path.join(workdir, "checkpoints")):
    raise ValueError(f"work dir {workdir} already holds checkpoints; use a new --workdir")
  arrays = read_hf_weights(hf_dir)
  p = family.base_prefix
  if p and not any(k.startswith(p) for k in arrays):
    arrays = {p + k: v for k, v in arrays.items()}
  tensors = Tensors(arrays, where=hf_dir)
  cfg = resolved_config(family, hf_cfg, tensors, preset=preset,
                        scan_layers=scan_layers, vocab_multiple=vocab_multiple)
  model = family.make_model(cfg, arch, None)
  canonical = family.import_tensors(hf_cfg, model, tensors)
  unused = tensors.unused(family.ignored)
  if unused:
    raise ValueError(f"{hf_dir} holds tensors a {arch} with this config.json does not have: "
                     f"{', '.join(unused[:5])}{' ...' if len(unused) > 5 else ''}")
  params = to_params(abstract_network(model), canonical)
  from common import hf_vocab  # pylint: disable=g-import-not-at-top
  vocab_path = hf_vocab.import_tokenizer(hf_dir, os.path.join(workdir, "vocab"), hf_cfg)
  if vocab_path:
    cfg.data.tokenizer = vocab_path
  config_lib.save_config(cfg, workdir)
  with open(os.path.join(workdir, HF_CONFIG_FILE), "w") as f:
    json.dump(hf_cfg, f, indent=2, sort_keys=True)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=1, async_save=False)
  ckpt.manager.save(0, args=ocp.args.Composite(
      params=ocp.args.StandardSave(params),
      meta=ocp.args.JsonSave({"identity": model.identity(), "step": 0,
                              "converted_from": {"hf_dir": hf_dir, "architecture": arch}})),
      force=True)
  ckpt.close()
  return cfg


def load_workdir(workdir: str, step: int | None = None
                 ) -> tuple[Family, str, ConfigDict, Any, dict, int]:
  """(family, HF architecture, config, model, params (pure dict, one device), step)."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{workdir} has no config.json (not a work dir)")
  with open(path) as f:
    cfg = ConfigDict(json.load(f))
  root, step = resolve_checkpoint(workdir if step is None else
                                  os.path.join(workdir, "checkpoints", str(step)))
  with ocp.CheckpointManager(root) as mgr:
    identity = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
                           )["meta"]["identity"]
  found = [(f, f.architecture_of(identity)) for f in families()]
  found = [(f, a) for f, a in found if a]
  if not found:
    raise ValueError(f"{workdir} holds a {identity.get('family')!r} model; exportable: "
                     f"{', '.join(a for f in families() for a in f.architectures)}")
  family, arch = found[0]
  model = family.make_model(cfg, arch, identity)
  abstract = nnx.to_pure_dict(nnx.state(abstract_network(model), nnx.Param))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  params, step, _, _ = load_params(os.path.join(root, str(step)), abstract,
                                   jax.tree.map(lambda _: device, abstract))
  return family, arch, cfg, model, params, step


def load_network(workdir: str, step: int | None = None) -> tuple[ConfigDict, Any, nnx.Module]:
  """(config, model, network with the checkpoint's params) of a work dir, on one device."""
  _, _, cfg, model, params, _ = load_workdir(workdir, step)
  graphdef, state = nnx.split(abstract_network(model))
  nnx.replace_by_pure_dict(state, params)
  return cfg, model, nnx.merge(graphdef, state)


def export_hf(workdir: str, out_dir: str, *, step: int | None = None) -> str:
  """Writes config.json + model.safetensors (+ tokenizer files) for a work dir's checkpoint."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(os.path.expanduser(workdir))
  family, _, cfg, model, params, _ = load_workdir(workdir, step)
  hf_source = {}
  if os.path.isfile(os.path.join(workdir, HF_CONFIG_FILE)):
    with open(os.path.join(workdir, HF_CONFIG_FILE)) as f:
      hf_source = json.load(f)
  canonical = from_params(abstract_network(model), params)
  vocab_size = hf_source.get("vocab_size")
  if vocab_size is not None and vocab_size < cfg.model.vocab_size:  # undo import-time padding
    canonical = _trim_vocab(model, canonical, vocab_size)
  from common import hf_vocab  # pylint: disable=g-import-not-at-top
  vocab = hf_vocab.workdir_vocab(workdir)
  tensors = family.export_tensors(model, canonical)
  hf_cfg = family.hf_config(model, hf_source, canonical, vocab)
  os.makedirs(out_dir, exist_ok=True)
  save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
            os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
  with open(os.path.join(out_dir, "config.json"), "w") as f:
    json.dump(hf_cfg, f, indent=2, sort_keys=True)
  if vocab is not None:
    hf_vocab.export_tokenizer(vocab, out_dir, family.sp_tokenizer_class)
  return out_dir


def _trim_vocab(model: Any, canonical: dict[str, np.ndarray], vocab_size: int) -> dict:
  net = abstract_network(model)
  out = dict(canonical)
  for path, shape, names, stack in _leaves(net):
    names = names[1:] if stack is not None else names
    if "vocab" not in names:
      continue
    ax = names.index("vocab")
    keys = [_canonical(path, stack, i) for i in range(shape[0])] if stack else [
        _canonical(path, None)]
    for k in keys:
      out[k] = np.take(out[k], np.arange(vocab_size), axis=ax)
  return out


# --------------------------------------------------------------------------- command line

def _define_flags() -> dict[str, flags.FlagHolder]:
  """Defined by the command line only: importing this module defines no flags (--workdir is
  common.entry's)."""
  return {
      "hf_dir": flags.DEFINE_string("hf_dir", None, "Import: a local Hugging Face model "
                                    "directory (config.json + weights [+ tokenizer])."),
      "export_to": flags.DEFINE_string("export_to", None, "Export: the Hugging Face directory "
                                       "to write from --workdir."),
      "preset": flags.DEFINE_string("preset", None, "Import: the configs/<family>.py preset the "
                                    "HF shapes override (default: the family's)."),
      "scan_layers": flags.DEFINE_bool("scan_layers", None, "Import: stacked (scanned) layer "
                                       "parameters (default: the preset's)."),
      "vocab_multiple": flags.DEFINE_integer("vocab_multiple", 1, "Import: zero-pad the vocab "
                                             "to a multiple (e.g. 128, as our presets do); "
                                             "export trims it back."),
      "step": flags.DEFINE_integer("step", None, "Export: checkpoint step (default: latest)."),
  }


def main(f: dict[str, flags.FlagHolder], argv) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}")
  workdir = entry.workdir()
  if bool(f["hf_dir"].value) == bool(f["export_to"].value):
    raise ValueError("give exactly one of --hf_dir (import) or --export_to (export)")
  if f["hf_dir"].value:
    hf_dir, preset = f["hf_dir"].value, f["preset"].value
    cfg = import_hf(hf_dir, workdir, preset=preset, scan_layers=f["scan_layers"].value,
                    vocab_multiple=f["vocab_multiple"].value)
    family, _ = family_for(read_hf_config(hf_dir), hf_dir)
    preset = preset or family.default_preset
    base = preset_config(family, preset).model
    overrides = " ".join(f"--config.model.{k}={v}" for k, v in cfg.model.items()
                         if base.get(k) != v)
    print(f"imported {hf_dir} -> {workdir}; its model is configs/{family.name}.py:{preset} "
          f"{overrides}; fine-tune or run it with the params in {workdir}")
  else:
    out = export_hf(workdir, f["export_to"].value, step=f["step"].value)
    print(f"exported {workdir} -> {out}")


def cli() -> None:
  holders = _define_flags()
  app.run(config_lib.exit_on_error(functools.partial(main, holders)))


if __name__ == "__main__":
  cli()
