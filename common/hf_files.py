"""Reading Hugging Face model directories, and what a model family provides to convert.

A family maps tensors in `<family>/hf.py` (a `Family`) between Hugging Face names and our
*canonical* names (`common.param_layout`); `common.convert` holds the list of families. Files are read locally (config.json +
model.safetensors, sharded safetensors or a PyTorch `pytorch_model.bin` state_dict), never
from the network.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Callable

import ml_dtypes
import numpy as np
from ml_collections import ConfigDict

from common import config as config_lib

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
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


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


def preset_config(family: Family, preset: str | None) -> ConfigDict:
  spec = os.path.join(config_lib.CONFIG_DIR, f"{family.name}.py:{preset or family.default_preset}")
  return config_lib.load_config_file(spec)
