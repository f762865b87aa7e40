"""``python -m tbjax.walkforward``: the command lives in :mod:`tbjax.cli.walkforward`."""

import sys

from tbjax.cli.walkforward import main

if __name__ == "__main__":
    sys.exit(main())
