"""``python -m soak``: the command line (``--help`` lists the options)."""

import sys

from soak.cli import main

if __name__ == "__main__":
    sys.exit(main())
