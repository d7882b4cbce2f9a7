"""Parameters in *canonical* form: {'a/b/3/c': array}, the parameter path joined by '/', each
LayerStack layer under its own index (the unscanned layout), whatever the network's layout.

Hugging Face conversion maps HF tensor names to these names; `to_params` stacks scanned
stacks and pads the vocab axis, `from_params` splits them again; restoring a checkpoint saved
with the other `model.scan_layers` goes through the same pair.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx

from common.transformer import LayerStack


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


def trim_vocab(model: Any, canonical: dict[str, np.ndarray], vocab_size: int) -> dict:
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
