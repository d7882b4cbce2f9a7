#!/usr/bin/env bash
# Pretrain-then-fine-tune, measured: the CPU demo T5 (configs/t5.py:demo) is pretrained with
# span corruption on the Debian description bodies (train split), then fine-tuned to write a
# package's one-line synopsis from its description (description -> synopsis), purely by flags.
# Reports test ROUGE-1/2/Lsum (beam 4, alpha 0.6) for
#   (a) fine-tuned from the pretrained checkpoint,
#   (b) the same fine-tuning budget from random initialisation,
#   (c) a trivial baseline: the first N words of the description (N = median synopsis length
#       in the TRAIN split),
# with example outputs and the wall time of every stage.
#
#   bash benchmarks/t5_pretrain_finetune.sh   # env: DATA_DIR OUT PRE_STEPS FT_STEPS BATCH TEST_N
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-/work/data}
OUT=${OUT:-workdirs/t5_pretrain_finetune}
PRE_STEPS=${PRE_STEPS:-600}
FT_STEPS=${FT_STEPS:-300}
BATCH=${BATCH:-32}
TEST_N=${TEST_N:-1000}
mkdir -p "$OUT"
export PYTHONPATH=$PWD
BASE=(--config=configs/t5.py:demo --config.data.data_dir="$DATA_DIR" --config.train.batch_size="$BATCH")
# T5's fine-tuning recipe: Adafactor, constant learning rate 1e-3; synopses longer than 32
# tokens (a handful) are truncated.
FT=(--config.task=summarize --config.optimizer.schedule=constant
    --config.optimizer.learning_rate=0.001 --config.optimizer.warmup_steps=0
    --config.data.max_target_len=32 --config.data.truncate_targets=True
    --config.rouge.num_examples=128 --config.train.checkpoint_every=100000)

stage() {  # stage NAME CMD...: runs CMD, logs to $OUT/NAME.log, records the wall time
  local name=$1; shift
  local t0=$SECONDS
  echo "== $name: $*" | tee "$OUT/$name.log"
  "$@" >>"$OUT/$name.log" 2>&1
  echo "$name $((SECONDS - t0))" >>"$OUT/wall_seconds.txt"
  grep -E "^(step .*(eval|ROUGE)|validation|wrote|\{)" "$OUT/$name.log" | tail -4
}

rm -f "$OUT/wall_seconds.txt"
stage pretrain python -m t5x_lite.train "${BASE[@]}" --workdir="$OUT/pretrain" \
  --config.train.num_steps="$PRE_STEPS" --config.train.eval_every="$PRE_STEPS" \
  --config.train.checkpoint_every="$PRE_STEPS"
stage finetune_pretrained python -m t5x_lite.train "${BASE[@]}" "${FT[@]}" \
  --config.init_checkpoint="$OUT/pretrain" --workdir="$OUT/ft_pretrained" \
  --config.train.num_steps=$((PRE_STEPS + FT_STEPS)) --config.train.eval_every=$((PRE_STEPS + FT_STEPS))
stage finetune_scratch python -m t5x_lite.train "${BASE[@]}" "${FT[@]}" \
  --workdir="$OUT/ft_scratch" --config.train.num_steps="$FT_STEPS" \
  --config.train.eval_every="$FT_STEPS"
for run in pretrained scratch; do
  stage "infer_$run" python -m t5x_lite.infer --workdir="$OUT/ft_$run" --input=split:test \
    --num_examples="$TEST_N" --beam_size=4 --alpha=0.6 --max_decode_len=32 --batch_size=64 \
    --output="$OUT/test_$run.jsonl"
done

python - "$OUT" "$DATA_DIR" "$TEST_N" <<'PY'
import json, statistics, sys
from common.data.sources import open_source
from t5x_lite.rouge import rouge

out, data_dir, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
train = open_source("debian", "train", data_dir)
words = statistics.median(len(train[i]["synopsis"].split()) for i in range(0, len(train), 10))
rows = {r: [json.loads(l) for l in open(f"{out}/test_{r}.jsonl")] for r in ("pretrained", "scratch")}
refs = [r["target"] for r in rows["pretrained"]]
lead = [" ".join(r["input"].split()[:int(words)]) for r in rows["pretrained"]]
scores = {"(a) fine-tuned from pretrained": rouge([r["prediction"] for r in rows["pretrained"]], refs),
          "(b) same budget, random init": rouge([r["prediction"] for r in rows["scratch"]], refs),
          f"(c) first {int(words)} words of the input": rouge(lead, refs)}
wall = dict(l.split() for l in open(f"{out}/wall_seconds.txt"))
lines = [f"Debian description -> synopsis, test split, first {len(refs)} examples "
         "(beam 4, alpha 0.6)", "",
         "| system | ROUGE-1 | ROUGE-2 | ROUGE-Lsum |", "|---|---:|---:|---:|"]
lines += [f"| {k} | {v['rouge1']:.2f} | {v['rouge2']:.2f} | {v['rougeLsum']:.2f} |"
          for k, v in scores.items()]
lines += ["", "wall seconds: " + ", ".join(f"{k} {v}" for k, v in wall.items()), "",
          "examples (reference | pretrained+ft | scratch+ft | lead):"]
for i in range(0, len(refs), max(1, len(refs) // 8))[:8]:
  lines.append(f"- {refs[i]!r} | {rows['pretrained'][i]['prediction']!r} | "
               f"{rows['scratch'][i]['prediction']!r} | {lead[i]!r}")
open(f"{out}/summary.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
