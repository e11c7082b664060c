"""Names renamed in 0.2 stay importable for one release, with a DeprecationWarning (CHANGELOG)."""

from __future__ import annotations

import importlib

import pytest

import netdiag


@pytest.mark.parametrize(
    ("module", "old"),
    [
        ("netdiag", "PingError"),
        ("netdiag", "KnockError"),
        ("netdiag.ping", "PingError"),
        ("netdiag.knock", "KnockError"),
    ],
)
def test_old_error_value_names_warn_and_are_error_reply(module: str, old: str) -> None:
    mod = importlib.import_module(module)
    with pytest.warns(DeprecationWarning, match="ErrorReply"):
        value = getattr(mod, old)
    assert value is netdiag.ErrorReply


def test_unknown_names_still_raise_attribute_error() -> None:
    with pytest.raises(AttributeError):
        netdiag.NoSuchThing  # noqa: B018
