"""``python -m tbjax.synth``: the command lives in :mod:`tbjax.cli.synth`."""

import sys

from tbjax.cli.synth import main

if __name__ == "__main__":
    sys.exit(main())
