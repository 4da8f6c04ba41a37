"""``python -m hvcore``: the ``hvcore`` command."""

import sys

from hvcore.cli import main

if __name__ == "__main__":
    sys.exit(main())
