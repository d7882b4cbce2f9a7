"""ROUGE-1/2/L/Lsum F-measures (x100) with Google's `rouge-score` package, as T5 reports them:
the one ROUGE of the library (T5 evaluation and inference, GPT in-context evaluation).

  python -m common.rouge --predictions=out.jsonl [--prediction_field=prediction
      --target_field=target]

Scores are the mean over examples (T5 reports the bootstrap mid-point, which is within noise
of the mean, but random); Porter stemming on; ROUGE-Lsum splits summaries into sentences at
newlines, so sentences are first put on lines of their own.
"""
from __future__ import annotations

import json
import os
import re

from absl import flags

from common import cli

KEYS = ("rouge1", "rouge2", "rougeL", "rougeLsum")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _lines(text: str) -> str:
  return "\n".join(s for s in _SENTENCE_END.split(text.strip()) if s)


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  if len(predictions) != len(references):
    raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
  if not predictions:
    raise ValueError("no predictions to score")
  scorer = rouge_scorer.RougeScorer(list(KEYS), use_stemmer=True)
  totals = dict.fromkeys(KEYS, 0.0)
  for pred, ref in zip(predictions, references):
    scores = scorer.score(target=_lines(ref), prediction=_lines(pred))
    for k in KEYS:
      totals[k] += scores[k].fmeasure
  return {k: 100.0 * v / len(predictions) for k, v in totals.items()}


def read_pairs(path: str, prediction_field: str, target_field: str) -> tuple[list[str], list[str]]:
  preds, refs = [], []
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--predictions {path} not found")
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
      for field in (prediction_field, target_field):
        if field not in row:
          raise ValueError(f"{path}:{lineno}: no field {field!r}; fields present: {sorted(row)}")
      preds.append(row[prediction_field])
      refs.append(row[target_field])
  return preds, refs


def define_flags() -> None:
  flags.DEFINE_string("predictions", None, "JSONL file with predictions and targets.")
  flags.DEFINE_string("prediction_field", "prediction", "Field holding the prediction.")
  flags.DEFINE_string("target_field", "target", "Field holding the reference.")


def main() -> None:
  f = flags.FLAGS
  if not f.predictions:
    raise ValueError("--predictions is required")
  scores = rouge(*read_pairs(f.predictions, f.prediction_field, f.target_field))
  print(json.dumps({k: round(v, 2) for k, v in scores.items()}))


def cli_main() -> None:
  cli.run(main, define_flags)


if __name__ == "__main__":
  cli_main()
