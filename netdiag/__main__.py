"""``python -m netdiag``: the ``netdiag`` command (``python -m netdiag ping -c 1 127.0.0.1``)."""

import sys

from .cli import main

sys.exit(main())
