#!/bin/bash
export PYTHONPATH=$PWD/src OMP_NUM_THREADS=1
A=/work/wt/sft-real/out
P="Tom has 3 apples and buys 4 more. How many apples does he have?"
for m in base lora dynamic; do
  case $m in base) ADP="--no-adapter";; lora) ADP="--adapter $A/sft-lora/best";; dynamic) ADP="--adapter $A/sft-dynamic/best";; esac
  for rp in 1.0 1.1; do
    echo "== $m rp $rp"; .venv/bin/python -m dynalora.cli.main generate $ADP --prompt "$P" --max-new-tokens 128 --no-stream --repetition-penalty $rp
  done
done
