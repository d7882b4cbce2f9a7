"""What every `python -m <family>.train` shares: flags, multi-host start-up, data preparation,
the run's tokenizer (its own, or the one of the run it fine-tunes from) and the CLI."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from typing import Any

import jax
from absl import flags
from ml_collections import ConfigDict, config_flags

from common import cli
from common import config as config_lib
from common.data.records import Source
from common.data.sources import open_source
from common.rundir import RunDir
from common.vocab import SentencePieceVocab, Vocabulary, load_vocab

FLAGS = flags.FLAGS
DEFAULT_TOKENIZER_SIZE = 8000


def define_run_flags() -> None:
  """--workdir and the multi-host flags (defined when a command starts, never at import)."""
  flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, config).")
  flags.DEFINE_bool("prepare", False, "Build the Debian dataset and train the dataset's "
                    "tokenizer first if missing (uses apt-get; root).")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 for multi-process "
                      "runs (multi-GPU hosts, clusters). On Cloud TPU use --distributed alone: "
                      "JAX finds the pod itself.")
  flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
  flags.DEFINE_integer("process_id", None, "This process's index.")
  flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize().")


def init_distributed() -> None:
  """Multi-host start-up; must run before any other JAX call."""
  if FLAGS.distributed or FLAGS.coordinator_address:
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)


def workdir() -> str:
  if not FLAGS.workdir:
    raise ValueError("--workdir is required")
  return os.path.abspath(os.path.expanduser(FLAGS.workdir))


def open_data(cfg: ConfigDict, split: str) -> Source:
  """`split` of the run's dataset (`data.dataset`, `data.data_dir`); with
  `data.skip_bad_records`, bad lines of file datasets are dropped and one warning says how
  many."""
  source = open_source(cfg.data.dataset, split, cfg.data.data_dir,
                       skip_bad_records=cfg.data.skip_bad_records)
  if getattr(source, "skipped", 0):
    print(f"warning: skipped {source.skipped} bad records of {cfg.data.dataset} split {split!r} "
          f"(first: {source.first_skipped})", flush=True)
  return source


def skipped_records(source: Source) -> dict[str, float]:
  """The metrics row a run writes at its start about its training data."""
  return {"data/skipped_records": float(getattr(source, "skipped", 0))}


def tokenizer_size(cfg: ConfigDict, extra_ids: int = 0) -> int:
  """Pieces of the tokenizer `--prepare` trains for a model: what fits its embedding table
  (after T5's sentinels), at most DEFAULT_TOKENIZER_SIZE."""
  return min(DEFAULT_TOKENIZER_SIZE, cfg.model.vocab_size - extra_ids)


def default_tokenizer(cfg: ConfigDict, extra_ids: int = 0) -> str:
  """Where `--prepare` puts the dataset's tokenizer for this model size: data_dir/tokenizers/
  <dataset>_sp<size>.model (the quickstart's is debian_sp8k.model)."""
  size = tokenizer_size(cfg, extra_ids)
  slug = re.sub(r"[^A-Za-z0-9]+", "_", cfg.data.dataset).strip("_")
  name = f"{slug}_sp{size // 1000}k" if size % 1000 == 0 else f"{slug}_sp{size}"
  return os.path.join(cfg.data.data_dir, "tokenizers", f"{name}.model")


def prepare_data(cfg: ConfigDict, extra_ids: int = 0) -> None:
  """Builds the Debian corpus and trains the dataset's tokenizer when missing (--prepare)."""
  if cfg.data.dataset == "debian":
    from common.data.debian import prepare_debian  # pylint: disable=g-import-not-at-top
    prepare_debian(cfg.data.data_dir)
  path = default_tokenizer(cfg, extra_ids)
  if not cfg.data.tokenizer and not cfg.finetune.init_from and not os.path.exists(path):
    from common.tokenizer import train_from_dataset  # pylint: disable=g-import-not-at-top
    train_from_dataset(cfg.data.dataset, cfg.data.data_dir, path,
                       vocab_size=tokenizer_size(cfg, extra_ids), text_field=cfg.data.text_field,
                       fit_corpus=True)


def _sha256(path: str) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def _with_sentinels(vocab: Vocabulary, extra_ids: int) -> Vocabulary:
  if extra_ids and vocab.extra_ids != extra_ids:
    if not isinstance(vocab, SentencePieceVocab):  # a tokenizer.json's sentinels are its own
      raise ValueError(f"tokenizer {vocab.path} has {vocab.extra_ids} sentinel ids but "
                       f"data.extra_ids is {extra_ids}; set --config.data.extra_ids="
                       f"{vocab.extra_ids}")
    vocab = type(vocab)(vocab.path, extra_ids=extra_ids)
  return vocab


def run_vocab(cfg: ConfigDict, extra_ids: int = 0) -> Vocabulary:
  """The run's tokenizer: the one the `finetune.init_from` run trained with (a different
  `data.tokenizer` would feed its embeddings ids they never learnt), else `data.tokenizer`,
  else the dataset's own (`default_tokenizer`), never another dataset's. It must fit the
  model's embedding table."""
  if cfg.finetune.init_from:
    try:
      vocab = RunDir.find(cfg.finetune.init_from).vocab()
    except FileNotFoundError as e:
      raise FileNotFoundError(f"finetune.init_from: {e}") from None
    if cfg.data.tokenizer:
      given = load_vocab(cfg.data.tokenizer)
      if _sha256(given.path) != _sha256(vocab.path):
        raise ValueError(f"data.tokenizer {cfg.data.tokenizer} is not the tokenizer "
                         f"{cfg.finetune.init_from} was trained with ({vocab.path}); leave "
                         "data.tokenizer empty to use it")
    where = f"the tokenizer of {cfg.finetune.init_from}"
  else:
    path = cfg.data.tokenizer or default_tokenizer(cfg, extra_ids)
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"no tokenizer for dataset {cfg.data.dataset!r} at {path}: pass "
          "--config.data.tokenizer=PATH.model, or --prepare to train one on the dataset")
    vocab, where = load_vocab(path), f"tokenizer {path}"
  vocab = _with_sentinels(vocab, extra_ids)
  if vocab.vocab_size > cfg.model.vocab_size:
    raise ValueError(f"{where} has {vocab.vocab_size} ids but model.vocab_size is "
                     f"{cfg.model.vocab_size}; raise model.vocab_size")
  return vocab


def make_cli(run: Callable[..., Any], family: str, default_preset: str) -> Callable[[], None]:
  """The `cli()` of a `<family>.train` module: config checked before absl parses the flags,
  multi-host start-up, then `run(config, workdir, prepare=...)`."""
  default_spec = os.path.join(config_lib.CONFIG_DIR, f"{family}.py:{default_preset}")
  holder: list = []

  def define() -> None:
    define_run_flags()
    holder.append(config_flags.DEFINE_config_file(
        "config", default_spec, f"{family} config file[:preset]", lock_config=True))

  def main() -> None:
    config_lib.validate(holder[0].value)
    init_distributed()
    run(holder[0].value, workdir(), prepare=FLAGS.prepare)

  def cli_main() -> None:
    cli.run(main, define, argv_check=lambda argv: config_lib.check_overrides(argv, default_spec))

  return cli_main
