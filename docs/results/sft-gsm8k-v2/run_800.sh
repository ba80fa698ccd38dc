#!/bin/bash
# issue 16: 800 GSM8K training problems, 1 epoch, defaults; judged on 200 held-out test problems
# Run from a checkout whose out/ holds base200-rp1.05.jsonl: the committed
# decoding/answer-test200-base-rp1.05.jsonl with each sample's `decoding` taken from its .json `settings` (COMMAND.md).
m=$1
cd "$(dirname "$0")/.."
OMP_NUM_THREADS=1 PYTHONPATH=$PWD/src .venv/bin/python -m dynalora.cli.main sft \
  --data ../shared/data/gsm8k/train.jsonl --eval-data ../shared/data/gsm8k/test.jsonl \
  --max-eval-samples 200 --seed 0 --method $m --max-train-samples 800 --epochs 1 \
  --generation-samples 200 --samples 3 --max-new-tokens 192 --eval-batch-size 16 --no-progress \
  --baseline-samples out/base200-rp1.05.jsonl --output out/sft-$m-800
