#!/bin/bash
# The 200 held-out GSM8K test problems (the same as docs/results/sft-gsm8k-v2), decoded with the chosen default (repetition penalty 1.1).
export PYTHONPATH=$PWD/src OMP_NUM_THREADS=1
D=/work/shared/data/gsm8k
A=/work/wt/sft-real/out
which=$1
case $which in
  base) ADP="";;
  lora) ADP="--adapter $A/sft-lora/best";;
  dynamic) ADP="--adapter $A/sft-dynamic/best";;
esac
/usr/bin/time -v .venv/bin/python benchmarks/sft_generation.py --data $D/train.jsonl --eval-data $D/test.jsonl \
  --max-eval-samples 200 --seed 0 --n 200 --max-new-tokens 192 --batch-size 16 $ADP --output out/test200-$which-rp1.1 > out/test200-$which.log 2>&1
