"""``python -m tbjax.train``: the command lives in :mod:`tbjax.cli.train`."""

import sys

from tbjax.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
