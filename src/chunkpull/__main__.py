"""Run the command line as ``python -m chunkpull``; see ``chunkpull.cli``."""

import sys

from chunkpull.cli import main

if __name__ == "__main__":
    sys.exit(main())
