"""``python -m tbjax.hpo``: the command lives in :mod:`tbjax.cli.hpo`."""

import sys

from tbjax.cli.hpo import main

if __name__ == "__main__":
    sys.exit(main())
