"""`python -m dynalora ...`: the command line, also for launchers that take a module name
(`torchrun --nproc_per_node 2 -m dynalora train ...`, `accelerate launch -m dynalora train ...`)."""

import sys

from dynalora.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
