"""``python -m tbjax.frontier``: the command lives in :mod:`tbjax.cli.frontier`."""

import sys

from tbjax.cli.frontier import main

if __name__ == "__main__":
    sys.exit(main())
