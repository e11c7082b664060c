"""The lab now lives in the package, as a documented testing helper (netdiag.testing.lab); this
shim keeps ``from lab import Lab`` working in the suite's modules."""

from netdiag.testing.lab import *  # noqa: F403
from netdiag.testing.lab import PROJECT_ROOT, _configure_ecmp_hash  # noqa: F401
