"""``python -m tbjax.check``: the command lives in :mod:`tbjax.cli.check`."""

import sys

from tbjax.cli.check import main

if __name__ == "__main__":
    sys.exit(main())
