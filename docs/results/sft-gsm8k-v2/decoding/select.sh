#!/bin/bash
# Selection of the decoding setting (issue 16): 64 GSM8K *training* problems the 400-problem runs never saw.
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
  --max-eval-samples 200 --seed 0 --selection-from-train 64 --max-train-samples 400 \
  --max-new-tokens 192 --batch-size 16 --repetition-penalty 1.0 1.1 1.2 $ADP --output out/select-$which > out/select-$which.log 2>&1
