"""Continuous diagnostics as a Prometheus exporter: ``python -m netdiag.exporter``.

The package is split by concept: :mod:`.config` (the TOML file, checked), :mod:`.schedule`
(the pure recurring scheduler), :mod:`.metrics` (prometheus-client collectors), :mod:`.runner`
(trio: shared diagnostics, due rounds), :mod:`.http` (Hypercorn + ASGI) and ``__main__`` (the
CLI). Only :mod:`.config` and :mod:`.schedule` work without the ``exporter`` extra
(``pip install 'netdiag[exporter]'``), so nothing is imported here.
"""
