#!/bin/bash
# The apples prompt answered by the base model and both adapters at several repetition penalties:
#   apples.sh "1.0 1.1" [dynalora generate flags, e.g. --penalize-prompt]
set -euo pipefail
export PYTHONPATH=$PWD/src OMP_NUM_THREADS=1
A=/work/wt/sft-real/out
P="Tom has 3 apples and buys 4 more. How many apples does he have?"
penalties=$1
shift
for m in base lora dynamic; do
  case $m in base) adapter=(--no-adapter);; *) adapter=(--adapter "$A/sft-$m/best");; esac
  for rp in $penalties; do
    echo "== $m rp $rp $*"
    .venv/bin/python -m dynalora.cli.main generate "${adapter[@]}" --prompt "$P" --max-new-tokens 128 --no-stream \
      --repetition-penalty "$rp" "$@"
  done
done
