"""The exception contract (issue 15 item 3): what a user's code raises inside ``async with`` or
``async for`` comes out as itself, never wrapped in an ExceptionGroup by the object's nursery;
netdiag's own errors (a name that does not resolve, a wrong argument) likewise.

The bad host name is netdiag.testing.UNRESOLVABLE: no DNS query leaves the machine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from netdiag import (
    Knock,
    Knocker,
    Ping,
    Pinger,
    ResolveError,
    Trace,
    Tracer,
)

pytestmark = pytest.mark.privileged

from netdiag.testing import UNRESOLVABLE as BAD_NAME  # noqa: E402


class Mine(Exception):
    pass


OBJECTS: list[Callable[[], Any]] = [Pinger, Tracer, Knocker]


@pytest.mark.parametrize("make", OBJECTS, ids=lambda m: m.__name__)
async def test_users_exception_in_async_with_comes_out_as_itself(make: Callable[[], Any]) -> None:
    with pytest.raises(Mine) as info:
        async with make():
            raise Mine("from the body")
    assert type(info.value) is Mine


@pytest.mark.parametrize("make", OBJECTS, ids=lambda m: m.__name__)
async def test_keyboard_interrupt_style_base_exceptions_too(make: Callable[[], Any]) -> None:
    with pytest.raises(KeyboardInterrupt):
        async with make():
            raise KeyboardInterrupt


ITERATORS: list[tuple[str, Callable[[Any], Any]]] = [
    ("Pinger.ping", lambda p: p.ping(Ping(BAD_NAME, count=1))),
    ("Pinger.results", lambda p: p.results(Ping(BAD_NAME, count=1))),
    ("Pinger.sweep", lambda p: p.sweep(["127.0.0.1", BAD_NAME])),
]
KNOCK_ITERATORS: list[tuple[str, Callable[[Any], Any]]] = [
    ("Knocker.knock", lambda k: k.knock(Knock(BAD_NAME, 80, count=1))),
    ("Knocker.results", lambda k: k.results(Knock(BAD_NAME, 80, count=1))),
    ("Knocker.sweep", lambda k: k.sweep([(BAD_NAME, 80)])),
]
TRACE_ITERATORS: list[tuple[str, Callable[[Any], Any]]] = [
    ("Tracer.results", lambda t: t.results(Trace(BAD_NAME))),
]


@pytest.mark.parametrize(
    ("make", "name", "call"),
    [(Pinger, n, c) for n, c in ITERATORS]
    + [(Knocker, n, c) for n, c in KNOCK_ITERATORS]
    + [(Tracer, n, c) for n, c in TRACE_ITERATORS],
    ids=lambda x: x if isinstance(x, str) else "",
)
async def test_resolve_error_comes_out_of_async_for_and_async_with(
    make: Callable[[], Any], name: str, call: Callable[[Any], Any]
) -> None:
    with pytest.raises(ResolveError):
        async with make() as obj:
            async for _ in call(obj):
                pass


async def test_users_exception_from_the_loop_body_stops_the_probes() -> None:
    async with Pinger() as p:
        with pytest.raises(Mine):
            async for _ in p.results(Ping("127.0.0.1", count=50, interval=0.01)):
                raise Mine
        # The stream closed: its probes' keys are released at once.
        assert p.engine.table == {}


async def test_wrong_argument_types_raise_type_error_as_themselves() -> None:
    with pytest.raises(TypeError):
        async with Pinger() as p:
            p.results("127.0.0.1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        async with Knocker() as k:
            k.results("127.0.0.1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        async with Tracer() as t:
            async for _ in t.results("127.0.0.1"):  # type: ignore[arg-type]
                pass
