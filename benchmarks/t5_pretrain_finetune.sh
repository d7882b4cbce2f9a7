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
# (b) needs no pretrained checkpoint: it runs alongside the pretraining (both share the cores,
# so each stage's wall time is measured under the other's load).
stage finetune_scratch python -m t5x_lite.train "${BASE[@]}" "${FT[@]}" \
  --workdir="$OUT/ft_scratch" --config.train.num_steps="$FT_STEPS" \
  --config.train.eval_every="$FT_STEPS" &
stage pretrain python -m t5x_lite.train "${BASE[@]}" --workdir="$OUT/pretrain" \
  --config.train.num_steps="$PRE_STEPS" --config.train.eval_every="$PRE_STEPS" \
  --config.train.checkpoint_every="$PRE_STEPS"
wait
stage finetune_pretrained python -m t5x_lite.train "${BASE[@]}" "${FT[@]}" \
  --config.init_checkpoint="$OUT/pretrain" --workdir="$OUT/ft_pretrained" \
  --config.train.num_steps=$((PRE_STEPS + FT_STEPS)) --config.train.eval_every=$((PRE_STEPS + FT_STEPS))
for run in pretrained scratch; do
  stage "infer_$run" python -m t5x_lite.infer --workdir="$OUT/ft_$run" --input=split:test \
    --num_examples="$TEST_N" --beam_size=4 --alpha=0.6 --max_decode_len=32 --batch_size=64 \
    --output="$OUT/test_$run.jsonl"
done

python benchmarks/t5_pretrain_finetune_summary.py "$OUT" "$DATA_DIR"
