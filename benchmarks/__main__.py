"""`python -m benchmarks ls|run|sweep` (benchmarks/cli.py)."""
import sys

from .cli import main

sys.exit(main())
