"""``python -m tbjax.evaluate``: the command lives in :mod:`tbjax.cli.evaluate`."""

import sys

from tbjax.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
