"""``python -m relcast ...`` is the ``relcast`` command; ``torchrun ... -m relcast run ...``
runs it in several processes (docs/scaling.md)."""

import sys

from relcast.cli import main

if __name__ == "__main__":
    sys.exit(main())
