"""python -m spmm prune | info: see spmm/cli.py."""

import sys

from .cli import main

sys.exit(main())
