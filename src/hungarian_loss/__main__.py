"""`python -m hungarian_loss`: the demo (see `hungarian_loss._demo` and `--help`)."""

import sys

from hungarian_loss._demo import main

if __name__ == "__main__":
    sys.exit(main())
