#!/bin/bash
# Issue 16's real run: base model, LoRA and dynamic LoRA on 200 held-out GSM8K test problems.
set -x
export PYTHONPATH=$PWD/src OMP_NUM_THREADS=1
D=/work/shared/data/gsm8k
date
[ -f out/base200.json ] || /usr/bin/time -v .venv/bin/python benchmarks/sft_generation.py --data $D/train.jsonl --eval-data $D/test.jsonl \
    --max-eval-samples 200 --seed 0 --n 200 --max-new-tokens 192 --batch-size 16 --output out/base200 > out/base200.log 2>&1
date
for m in lora dynamic; do
  [ -f out/sft-$m/metrics.json ] || /usr/bin/time -v .venv/bin/python -m dynalora.cli.main sft --data $D/train.jsonl --eval-data $D/test.jsonl \
    --max-eval-samples 200 --seed 0 --method $m --max-train-samples 400 --epochs 1 \
    --generation-samples 200 --samples 3 --max-new-tokens 192 --eval-batch-size 16 --no-progress \
    --baseline-samples out/base200.jsonl --output out/sft-$m > out/sft-$m.log 2>&1
  date
done
