"""Batched T5 inference to JSONL: beam search (default), greedy or sampling.

  python -m t5x_lite.infer --workdir=TRAINED_DIR --input=split:test --output=preds.jsonl \\
      [--beam_size=4 --alpha=0.6 | --beam_size=1 [--temperature=0.7 --top_k=40 --top_p=0.9]]
      [--max_decode_len=64 --batch_size=32 --num_examples=N]

The work dir is self-describing: the network comes from its checkpoint's recorded identity,
the tokenizer from WORKDIR/vocab, and the dataset, fields, prefix and lengths from
WORKDIR/config.json. `--input` is `split:NAME` (that dataset's split) or a JSONL file whose
lines hold the configured input field (and, optionally, the target field). Each output line
is {"input", "prediction"[, "target"]}; ROUGE is printed when targets are present.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import ConfigDict

from common import allocator, entry, train_state
from common import config as config_lib
from common.checkpoint import load_params
from common.partitioning import Partitioner
from common.data.seq2seq import field_text, fit_length
from common.vocab import load_vocab
from t5x_lite import tasks
from t5x_lite.decode import predict_ids
from t5x_lite.model import T5Model
from t5x_lite.rouge import rouge
from t5x_lite.train import checkpoint_identity

_INPUT = flags.DEFINE_string("input", "split:test", "split:NAME or a JSONL file.")
_OUTPUT = flags.DEFINE_string("output", None, "JSONL file to write.")
_BEAM = flags.DEFINE_integer("beam_size", 4, "Beam size (1 = greedy or sampling).")
_ALPHA = flags.DEFINE_float("alpha", 0.6, "Beam-search length penalty exponent (T5X: 0.6).")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Sampling temperature (0 = greedy).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample from the k most likely tokens (0 = all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass.")
_MAX_LEN = flags.DEFINE_integer("max_decode_len", 64, "Most tokens to generate.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Inputs decoded together.")
_NUM = flags.DEFINE_integer("num_examples", 0, "Decode only the first N inputs (0 = all).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")


def load_run(workdir: str):
  """(config, vocab, graphdef, params, partitioner) of a trained work dir."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: --workdir must be a t5x_lite.train run")
  with open(path) as f:
    cfg = ConfigDict(json.load(f))
  identity = checkpoint_identity(workdir)
  if identity.get("family") != T5Model.name:
    raise ValueError(f"{workdir} holds a {identity.get('family')!r} checkpoint, not a T5 one")
  vocab = load_vocab(os.path.join(workdir, "vocab"))
  model = T5Model(cfg, checkpoint_scaling=identity["model"]["attn_logit_scaling"])
  setup = train_state.make_setup(model, cfg, Partitioner.from_config(cfg.mesh))
  params, *_ = load_params(workdir, setup.abstract_state["params"],
                           setup.state_shardings["params"])
  return cfg, vocab, setup.graphdef, params, setup.partitioner


def read_inputs(cfg, vocab, spec: str, num: int):
  """(input texts, encoder ids, target texts or None)."""
  if spec.startswith("split:"):
    return tasks.text_examples(cfg, vocab, spec[len("split:"):], num)
  if not os.path.isfile(spec):
    raise FileNotFoundError(f"--input {spec} is neither split:NAME nor an existing JSONL file")
  inp, tgt = tasks.fields(cfg.data)
  texts, targets = [], []
  with open(spec) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  for row in rows[:num or None]:
    texts.append(field_text(row, inp, "input"))
    targets.append(row.get(tgt))
  ids = [fit_length(vocab.encode(cfg.data.prefix + t), cfg.data.max_input_len, vocab.eos_id,
                    truncate=cfg.data.truncate_inputs, role="input") for t in texts]
  return texts, ids, targets if all(t is not None for t in targets) else None


def main(argv) -> None:
  del argv

  @config_lib.exit_on_error
  def run():
    if not _OUTPUT.value:
      raise ValueError("--output is required")
    cfg, vocab, graphdef, params, partitioner = load_run(entry.workdir())  # --workdir
    texts, ids, targets = read_inputs(cfg, vocab, _INPUT.value, _NUM.value)
    batch = _BATCH.value
    batch += -batch % partitioner.num_data  # rows spread evenly over the devices
    outs = predict_ids(graphdef, params, ids, input_len=cfg.data.max_input_len,
                       max_decode_len=_MAX_LEN.value, batch_size=batch,
                       eos_id=vocab.eos_id, beam_size=_BEAM.value, alpha=_ALPHA.value,
                       temperature=_TEMPERATURE.value, top_k=_TOP_K.value, top_p=_TOP_P.value,
                       vocab_size=vocab.vocab_size, seed=_SEED.value, partitioner=partitioner)
    preds = [vocab.decode(o) for o in outs]
    os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
    with open(_OUTPUT.value, "w") as f:
      for i, (text, pred) in enumerate(zip(texts, preds)):
        row = {"input": text, "prediction": pred}
        if targets is not None:
          row["target"] = targets[i]
        f.write(json.dumps(row) + "\n")
    print(f"wrote {len(preds)} predictions to {_OUTPUT.value}")
    if targets is not None:
      print(json.dumps({k: round(v, 2) for k, v in rouge(preds, targets).items()}))
  run()


if __name__ == "__main__":
  allocator.reexec_with_tcmalloc()
  app.run(main, argv=sys.argv)
