"""Batched T5 inference to JSONL: beam search (default), greedy or sampling.

  python -m t5x_lite.infer --workdir=TRAINED_DIR --input=split:test --output=preds.jsonl \\
      [--beam_size=4 --alpha=0.6 | --beam_size=1 [--temperature=0.7 --top_k=40 --top_p=0.9]]
      [--max_decode_len=64 --batch_size=32 --num_examples=N]

The work dir is self-describing: the network comes from its checkpoint's recorded identity,
the tokenizer from WORKDIR/vocab, and the dataset, fields, prefix and lengths from
WORKDIR/config.json; decoding options default to the run's `infer` section. `--input` is
`split:NAME` (that dataset's split) or a JSONL file whose lines hold the configured input field
(and, optionally, the target field). Each output line is {"input", "prediction"[, "target"]};
ROUGE is printed when targets are present.
"""

from __future__ import annotations

import json
import os

from absl import flags

from common import cli, entry
from common.data.seq2seq import field_text, fit_length
from common.rundir import LoadedRun, RunDir
from t5x_lite import tasks
from t5x_lite.decode import predict_ids
from t5x_lite.model import T5Model
from common.rouge import rouge

FLAGS = flags.FLAGS
# Decoding flags left unset take the run's `infer` section (configs/t5.py).
DECODING = ("beam_size", "alpha", "temperature", "top_k", "top_p", "max_decode_len",
            "batch_size")


def define_flags() -> None:
  entry.define_run_flags()
  flags.DEFINE_string("input", "split:test", "split:NAME or a JSONL file.")
  flags.DEFINE_string("output", None, "JSONL file to write.")
  flags.DEFINE_integer("beam_size", None, "Beam size (1 = greedy or sampling).")
  flags.DEFINE_float("alpha", None, "Beam-search length penalty exponent (T5X: 0.6).")
  flags.DEFINE_float("temperature", None, "Sampling temperature (0 = greedy).")
  flags.DEFINE_integer("top_k", None, "Sample from the k most likely tokens (0 = all).")
  flags.DEFINE_float("top_p", None, "Nucleus sampling mass.")
  flags.DEFINE_integer("max_decode_len", None, "Most tokens to generate.")
  flags.DEFINE_integer("batch_size", None, "Inputs decoded together.")
  flags.DEFINE_integer("num_examples", 0, "Decode only the first N inputs (0 = all).")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")


def load_run(workdir: str) -> LoadedRun:
  """A trained T5 work dir: config, tokenizer, params on its partitioner."""
  def make_model(cfg, identity):
    if identity.get("family") != T5Model.name:
      raise ValueError(f"{workdir} holds a {identity.get('family')!r} checkpoint, not a T5 one")
    return T5Model(cfg, checkpoint_scaling=identity["model"]["attn_logit_scaling"])
  return RunDir.find(workdir).load(make_model)


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


def main() -> None:
  if not FLAGS.output:
    raise ValueError("--output is required")
  run = load_run(entry.workdir())
  cfg, vocab, partitioner = run.cfg, run.vocab, run.setup.partitioner
  opts = {k: FLAGS[k].value if FLAGS[k].value is not None else cfg.infer[k] for k in DECODING}
  texts, ids, targets = read_inputs(cfg, vocab, FLAGS.input, FLAGS.num_examples)
  batch = opts.pop("batch_size")
  batch += -batch % partitioner.num_data  # rows spread evenly over the devices
  outs = predict_ids(run.setup.graphdef, run.params, ids, input_len=cfg.data.max_input_len,
                     batch_size=batch, eos_id=vocab.eos_id, vocab_size=vocab.vocab_size,
                     seed=FLAGS.seed, partitioner=partitioner, **opts)
  preds = [vocab.decode(o) for o in outs]
  os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
  with open(FLAGS.output, "w") as f:
    for i, (text, pred) in enumerate(zip(texts, preds)):
      row = {"input": text, "prediction": pred}
      if targets is not None:
        row["target"] = targets[i]
      f.write(json.dumps(row) + "\n")
  print(f"wrote {len(preds)} predictions to {FLAGS.output}")
  if targets is not None:
    print(json.dumps({k: round(v, 2) for k, v in rouge(preds, targets).items()}))


def cli_main() -> None:
  cli.run(main, define_flags)


if __name__ == "__main__":
  cli_main()
