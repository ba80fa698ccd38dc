#!/bin/bash
# Answers of the base model or an adapter to GSM8K problems (issue 16), from the repository root:
#   decode.sh PHASE MODEL NAME [benchmarks/sft_generation.py flags...]   -> out/NAME.json(l), out/NAME.log
# PHASE: select  = 64 GSM8K *training* problems the 400-problem runs never saw (choosing a setting)
#        test200 = the 200 held-out test problems of docs/results/sft-gsm8k-v2
# MODEL: base, lora or dynamic (best/ of out/sft-lora and out/sft-dynamic from run_200.sh)
set -euo pipefail
export PYTHONPATH=$PWD/src OMP_NUM_THREADS=1
D=/work/shared/data/gsm8k
A=/work/wt/sft-real/out
phase=$1 model=$2 name=$3
shift 3
case $model in
  base) adapter=();;
  lora|dynamic) adapter=(--adapter "$A/sft-$model/best");;
  *) echo "decode.sh: MODEL must be base, lora or dynamic, not '$model'" >&2; exit 2;;
esac
case $phase in
  select) problems=(--selection-from-train 64 --max-train-samples 400);;
  test200) problems=(--n 200);;
  *) echo "decode.sh: PHASE must be select or test200, not '$phase'" >&2; exit 2;;
esac
mkdir -p out
/usr/bin/time -v .venv/bin/python benchmarks/sft_generation.py --data $D/train.jsonl --eval-data $D/test.jsonl \
  --max-eval-samples 200 --seed 0 "${problems[@]}" --max-new-tokens 192 --batch-size 16 "${adapter[@]}" \
  "$@" --output "out/$name" > "out/$name.log" 2>&1
