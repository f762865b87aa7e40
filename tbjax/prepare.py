"""``python -m tbjax.prepare``: the command lives in :mod:`tbjax.cli.prepare`."""

import sys

from tbjax.cli.prepare import main

if __name__ == "__main__":
    sys.exit(main())
