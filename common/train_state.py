"""The train state: what it is, how it is laid out, created, resumed and initialised from
another run.

The state is a plain pytree {step, params, opt_state}; params are the NNX network's
`nnx.Param`s as a pure dict, merged back into the network inside the jitted step (split once,
merge in the pure function: no object-graph traversal per step). It is created directly in
its shardings, never materialised whole on one device.

A model family plugs in through a `Model` (T5X's network/model split): it builds the network
and computes loss sums from a batch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from common import sharding
from common.checkpoint import Checkpointer, identity_diff
from common.checkpoint_reader import load_params, read_meta
from common.optim import make_optimizer
from common.partitioning import Partitioner, choose_fsdp_split

# Sums every model's `loss` returns; `input_tokens` and task sums (mlm_loss, ...) are optional.
REQUIRED_SUMS = ("loss", "weights", "correct")


class Model(Protocol):
  """What the trainer needs from a model family."""

  name: str  # the family, recorded in every checkpoint's identity
  unit: str  # what `weights` and the progress line count: "tok" (tokens) or "ex" (examples)

  def make_network(self, rngs: nnx.Rngs) -> nnx.Module: ...

  def loss(self, network: nnx.Module, batch: dict[str, jax.Array], *,
           dropout_key: jax.Array | None) -> dict[str, jax.Array]:
    """Sums over the batch: REQUIRED_SUMS (`weights` is the normaliser, `correct` the count
    of right predictions) and any task sums. Optional `input_tokens`: what throughput and MFU
    count (the units `flops_per_token` is per) when that differs from `weights`, e.g. a loss
    on part of each row only."""

  def flops_per_token(self) -> float: ...

  def identity(self) -> dict: ...


@dataclasses.dataclass
class Setup:
  """Everything derived from (model, config, partitioner) before any array is created."""
  model: Model
  cfg: ConfigDict
  partitioner: Partitioner
  graphdef: Any
  tx: optax.GradientTransformation
  abstract_state: dict
  state_specs: dict
  state_shardings: dict
  init_fn: Callable[[jax.Array], dict]

  def merge(self, params: Any) -> nnx.Module:
    return nnx.merge(self.graphdef, params)

  def abstract_batch(self, batch: dict[str, Any]) -> dict[str, jax.ShapeDtypeStruct]:
    """ShapeDtypeStructs of a global batch, sharded as `global_batch` shards it (lowering)."""
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype,
                                    sharding=self.partitioner.batch_sharding(len(v.shape)))
            for k, v in batch.items()}

  def abstract_train_state(self) -> dict:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        self.abstract_state, self.state_shardings)


def check_config(cfg: ConfigDict, partitioner: Partitioner) -> None:
  """Up-front checks of the train section against the mesh, one clear message each."""
  t = cfg.train
  partitioner.check_batch(t.batch_size, "train.batch_size")
  if t.grad_accum_steps < 1:
    raise ValueError(f"train.grad_accum_steps={t.grad_accum_steps} must be >= 1")
  n_data = partitioner.num_data
  if t.batch_size % (t.grad_accum_steps * n_data):
    raise ValueError(f"train.batch_size={t.batch_size} must be divisible by grad_accum_steps x "
                     f"data axes = {t.grad_accum_steps} x {n_data}")
  if t.batch_size % partitioner.num_processes:
    raise ValueError(f"train.batch_size={t.batch_size} is not divisible by the number of "
                     f"processes ({partitioner.num_processes})")


def make_setup(model: Model, cfg: ConfigDict, partitioner: Partitioner) -> Setup:
  """Abstract network and optimizer state, laid out by `partitioner`. If the fsdp axis cannot
  shard every parameter as the rules say, it is split in two (`choose_fsdp_split`): the
  returned setup's partitioner is then a refinement of the one passed in."""
  with nnx.use_eager_sharding(False):
    abs_net = nnx.eval_shape(lambda: model.make_network(nnx.Rngs(params=0)))
  graphdef, abs_params, rest = nnx.split(abs_net, nnx.Param, ...)
  if jax.tree.leaves(rest):
    raise ValueError("networks must hold only nnx.Param state (dropout keys are passed per call)")
  param_specs = partitioner.param_specs(abs_params)
  if partitioner.replicated:
    split = choose_fsdp_split(partitioner, abs_params)
    if split != partitioner.fsdp_split:
      partitioner = partitioner.with_fsdp_split(split)
      param_specs = partitioner.param_specs(abs_params)
  partitioner.check_layout()
  tx = make_optimizer(cfg.optimizer, cfg.train.num_steps)

  def init_fn(key: jax.Array) -> dict:
    with nnx.use_eager_sharding(False):
      net = model.make_network(nnx.Rngs(params=key))
    params = nnx.to_pure_dict(nnx.split(net, nnx.Param)[1])
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  abstract = jax.eval_shape(init_fn, jax.random.key(0))
  specs = {"step": P(), "params": param_specs,
           "opt_state": sharding.opt_state_specs(abstract["opt_state"], abstract["params"],
                                                 param_specs)}
  shardings = partitioner.shardings(specs, abstract)
  return Setup(model, cfg, partitioner, graphdef, tx, abstract, specs, shardings, init_fn)


def check_init_from(path: str, model: Model) -> None:
  """The run to start from holds this family and architecture (task heads may differ:
  `model.head_fields`); one clear line before anything is compiled or written."""
  saved = read_meta(path).get("identity", {})
  if saved.get("family") != model.name:
    raise ValueError(f"finetune.init_from {path} holds a {saved.get('family')!r} model, not a "
                     f"{model.name!r} one")
  heads = set(getattr(model, "head_fields", ()))
  diffs = [d for d in identity_diff({"model": saved.get("model", {})},
                                    {"model": model.identity()["model"]})
           if d[0].split(".")[-1] not in heads]
  if diffs:
    described = "; ".join(f"{k}: checkpoint {a!r} vs config {b!r}" for k, a, b in diffs[:5])
    raise ValueError(f"finetune.init_from {path} has a different architecture ({described}); "
                     "use the preset it was trained with")


def init_state(setup: Setup) -> dict:
  """Initialises params and optimizer state directly into their shardings."""
  init = setup.partitioner.jit(setup.init_fn, out_shardings=setup.state_shardings)
  return init(jax.random.key(setup.cfg.seed))


def start_state(setup: Setup, ckpt: Checkpointer, data_iter: Any, *,
                init_from: str | None = None, restore_data: bool = True
                ) -> tuple[dict, int | None]:
  """The state a run starts from, and the checkpoint step it resumed (None: a fresh start).

  A work dir with a checkpoint resumes from its newest intact one (params, optimizer state,
  step and the data position, moved into `data_iter` unless `restore_data` is False: the
  data then starts from its beginning). Otherwise the state is initialised,
  and with `init_from` (fine-tuning) the parameters present in that checkpoint are loaded
  over the fresh ones; a new task head keeps its initialisation; the step starts at 0.
  """
  resumed = ckpt.restore_latest(setup.abstract_state, setup.state_shardings,
                                data_iter if restore_data else None)
  if resumed is not None:
    return resumed
  state = init_state(setup)
  if init_from:
    params, _, _, missing = load_params(init_from, setup.abstract_state["params"],
                                        setup.state_shardings["params"], strict=False)
    state["params"] = jax.tree.map(lambda new, old: old if new is None else new, params,
                                   state["params"], is_leaf=lambda x: x is None)
    print(f"initialised from {init_from}"
          + (f"; new parameters: {', '.join(missing)}" if missing else ""), flush=True)
  return state, None
