"""What the command-line tools share: argument types, one-line errors, exit codes, Ctrl-C,
privilege dropping, and output helpers.

The CLIs are thin: each parses arguments into the same dataclasses the library takes (``Ping``,
``Trace``, ``Knock``) and prints what the library yields. Everything here exists so that bad input
gives one clear line and exit status 2 -- never a traceback -- in every tool alike.

Exit statuses follow iputils: 0 success, 1 the target never answered, 2 usage or permission error,
141 (128 + SIGPIPE) when the reader of stdout went away (``... | head -2``): like iputils, the tool
then stops quietly instead of printing a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn

import trio

from .errors import FamilyUnavailableError, PrivilegeError, ResolveError
from .sock import Bind, parse_address
from .stats import RttStats

__all__ = [
    "EXIT_FAIL",
    "EXIT_OK",
    "EXIT_PIPE",
    "EXIT_USAGE",
    "Parser",
    "add_family",
    "add_privilege",
    "add_schedule",
    "add_version",
    "bind_for",
    "drop_privileges",
    "fail",
    "family_of",
    "fmt_ms",
    "guard_pipe",
    "int_range",
    "main",
    "print_json",
    "rtt_summary",
    "run",
    "seconds",
]

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
#: What a shell reports for a process killed by SIGPIPE, the status iputils ping ends with when
#: ``| head`` closes the pipe.
EXIT_PIPE = 128 + signal.SIGPIPE


class UsageError(Exception):
    """Raised by CLI code for input the parser could not catch (a bad host, say)."""


def fail(prog: str, message: str, status: int = EXIT_USAGE) -> NoReturn:
    """Print ``prog: message`` on stderr and exit: the one-line error every tool uses."""
    print(f"{prog}: {message}", file=sys.stderr)
    raise SystemExit(status)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage dump) and exit 2."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog, f"{message} (see --help)")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        # `-i -1` must say "interval must be >= 0", not "expected one argument": argparse
        # takes "-1" for an option because -4/-6 exist. Glue negative numbers to the option
        # that takes them ("-i-1"), which argparse reads as a value.
        argv = list(sys.argv[1:] if args is None else args)
        out: list[str] = []
        i = 0
        while i < len(argv):
            tok = argv[i]
            action = self._option_string_actions.get(tok)
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            if (
                action is not None
                and action.nargs is None
                and action.type is not None
                and nxt is not None
                and len(nxt) > 1
                and nxt[0] == "-"
                and (nxt[1].isdigit() or nxt[1] == ".")
            ):
                out.append(f"{tok}={nxt}" if tok.startswith("--") else tok + nxt)
                i += 2
                continue
            out.append(tok)
            i += 1
        return super().parse_known_args(out, namespace)


def int_range(lo: int, hi: int, name: str = "value") -> Callable[[str], int]:
    """An argparse type: an integer in ``[lo, hi]``; accepts 0x.. like iputils' ``-Q``."""

    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{name} must be between {lo} and {hi}, got {value}")
        return value

    return parse


def seconds(
    lo: float, hi: float, name: str, allow_zero: bool = True, unit: str = "seconds"
) -> Callable[[str], float]:
    """An argparse type: a number of ``unit`` (seconds unless said) within ``[lo, hi]``
    (``> 0`` unless allowed); the error names the unit, so ``--rate`` does not say seconds."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a number of {unit}, got {text!r}"
            ) from None
        if math.isnan(value) or value < lo or value > hi or (not allow_zero and value <= 0):
            low = f">= {lo:.15g}" if allow_zero else "> 0"
            raise argparse.ArgumentTypeError(
                f"{name} must be {low} and <= {hi:.15g} {unit}, got {text}"
            )
        return value

    return parse


def add_schedule(p: argparse.ArgumentParser, noun: str, wait: str) -> None:
    """``-c count -i interval -W timeout``, the schedule ping and knock share (iputils' flags
    and defaults: 4 probes, 1 s apart); ``wait`` says what waiting for an answer means."""
    p.add_argument("-c", dest="count", type=int_range(1, 10**9, "count"), default=4,
                   help=f"stop after COUNT {noun} (default 4)")  # fmt: skip
    p.add_argument("-i", dest="interval", type=seconds(0, 3600, "interval"), default=1.0,
                   help=f"seconds between {noun} (default 1)")  # fmt: skip
    p.add_argument("-W", dest="timeout", type=seconds(0, 3600, "timeout", allow_zero=False),
                   default=2.0, help=f"seconds to wait {wait} (default 2)")  # fmt: skip


def add_privilege(p: argparse.ArgumentParser, unprivileged: str) -> None:
    """``--unprivileged`` / ``--privileged``: force the datagram mode (described by
    ``unprivileged``) or raw sockets; by default raw if permitted, else the datagram mode."""
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--unprivileged", dest="privileged", action="store_false", default=None,
                      help=unprivileged)  # fmt: skip
    mode.add_argument("--privileged", dest="privileged", action="store_true",
                      help="use raw sockets only (default: raw if permitted, else "
                      "the unprivileged mode)")  # fmt: skip


def version_text(prog: str) -> str:
    """What ``--version`` prints: the tool and the netdiag release it belongs to."""
    from . import __version__

    return f"{prog} {__version__}" if prog == "netdiag" else f"{prog} (netdiag) {__version__}"


def add_version(p: argparse.ArgumentParser) -> None:
    """``-V`` / ``--version``, as iputils and traceroute spell it."""
    p.add_argument("-V", "--version", action="version", version=version_text(p.prog),
                   help="print the version and exit")  # fmt: skip


def add_family(p: argparse.ArgumentParser) -> None:
    """``-4`` / ``-6``: resolve names to one family only (they exclude each other)."""
    fam = p.add_mutually_exclusive_group()
    fam.add_argument("-4", dest="v4", action="store_true", help="use IPv4 only")
    fam.add_argument("-6", dest="v6", action="store_true", help="use IPv6 only")


def family_of(args: argparse.Namespace) -> int | None:
    """The IP version ``-4``/``-6`` asked for, or ``None``."""
    return 4 if args.v4 else 6 if args.v6 else None


def bind_for(source: str | None) -> Bind | None:
    """``-I``/``-s``: an address binds that family's sockets; anything else is an interface."""
    if source is None:
        return None
    try:
        return Bind.source(parse_address(source))
    except ValueError:
        return Bind(device=source)


def fmt_ms(seconds_: float) -> str:
    """An RTT in milliseconds with iputils' precision (3 significant decimals below 1 ms)."""
    ms = seconds_ * 1000.0
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def rtt_summary(rtt: RttStats, with_mdev: bool = True) -> str | None:
    """iputils' ``min/avg/max/mdev`` figures in milliseconds (fping's ``min/avg/max`` without
    ``with_mdev``), or ``None`` when nothing was timed. One place for every CLI's summary."""
    if not rtt.count:
        return None
    values = [rtt.min, rtt.avg, rtt.max] + ([rtt.mdev] if with_mdev else [])
    return "/".join(f"{v * 1000:.3f}" for v in values if v is not None)


def print_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def drop_privileges() -> None:
    """Under sudo, become the invoking user once the sockets are open, as iputils ping does.

    Raw sockets keep working after ``setuid`` (the kernel checked the capability when they were
    created), while a bug in everything that follows -- parsing hostile packets, DNS, output --
    can no longer act as root. Nothing happens unless we are root *and* SUDO_UID is set.
    """
    if os.geteuid() != 0:
        return
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if not uid or not uid.isdigit() or int(uid) == 0:
        return
    target_gid = int(gid) if gid and gid.isdigit() else int(uid)
    os.setgroups([])
    os.setgid(target_gid)
    os.setuid(int(uid))


async def until_interrupted(body: Callable[[], Awaitable[None]]) -> bool:
    """Run ``body``; Ctrl-C (SIGINT) cancels it cleanly so the caller can still print its
    summary, as ping does. Returns True if interrupted."""
    interrupted = False
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            nonlocal interrupted
            with trio.open_signal_receiver(signal.SIGINT) as signals:
                async for _ in signals:
                    interrupted = True
                    nursery.cancel_scope.cancel()
                    return

        nursery.start_soon(watch)
        await body()
        nursery.cancel_scope.cancel()
    return interrupted


def _only_broken_pipes(exc: BaseException) -> bool:
    """True if ``exc`` is a BrokenPipeError, or a (nested) group holding nothing else: trio's
    nurseries wrap the error raised by a ``print`` inside a task."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_broken_pipes(e) for e in exc.exceptions)
    return isinstance(exc, BrokenPipeError)


def _pipe_closed() -> int:
    """stdout's reader is gone: point stdout at /dev/null so the interpreter's final flush of
    what is still buffered cannot fail again ("Exception ignored ... BrokenPipeError", exit
    120), and report the status a SIGPIPE death would give."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout already closed or not a real file
        pass
    return EXIT_PIPE


def guard_pipe(fn: Callable[[], int]) -> int:
    """Call a CLI body; if stdout's pipe closed meanwhile, exit quietly with :data:`EXIT_PIPE`.

    The one mechanism every tool uses (through :func:`run`, and directly in ``doctor`` and
    ``netdiag``). Python ignores SIGPIPE, so a closed pipe surfaces as ``BrokenPipeError``
    from a ``print`` -- usually wrapped in an exception group by trio -- or from the final
    flush of buffered output, which is why stdout is flushed here, inside the guard.
    """
    try:
        status = fn()
        sys.stdout.flush()
        return status
    except BaseException as e:
        if _only_broken_pipes(e):
            return _pipe_closed()
        raise


def run(prog: str, fn: Callable[[], Awaitable[int]]) -> int:
    """Run an async CLI body under trio, mapping netdiag's errors to one line and exit 2, and a
    closed stdout pipe to a quiet exit 141 (:func:`guard_pipe`)."""
    return guard_pipe(lambda: _run(prog, fn))


def _run(prog: str, fn: Callable[[], Awaitable[int]]) -> int:
    try:
        return trio.run(fn)
    except PrivilegeError as e:
        fail(prog, str(e))
    except (ResolveError, FamilyUnavailableError, UsageError) as e:
        fail(prog, str(e))
    except (ValueError, TypeError) as e:
        fail(prog, str(e))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        raise  # guard_pipe's business, not a one-line error
    except OSError as e:
        fail(prog, e.strerror or str(e) if not e.filename else str(e))


#: subcommand -> (module, one line for ``netdiag --help``)
_COMMANDS = {
    "ping": ("netdiag.ping.__main__", "ICMP echo to hosts, or a mass ping of a target file"),
    "trace": ("netdiag.trace.__main__", "multipath traceroute (Paris flows, MDA)"),
    "knock": ("netdiag.knock.__main__", "TCP round trips with half-open SYN probes"),
    "doctor": ("netdiag.doctor", "which modes this user can run here, and how to enable the rest"),
    "exporter": ("netdiag.exporter.__main__", "ping, trace and knock jobs for Prometheus"),
}


def _usage() -> str:
    width = max(len(c) for c in _COMMANDS)
    lines = [
        "usage: netdiag {" + ",".join(_COMMANDS) + "} [options] ...",
        "       netdiag COMMAND --help   (the options of one command)",
        "",
        "commands:",
    ]
    lines += [f"  {cmd:<{width}}  {text}" for cmd, (_, text) in _COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``netdiag ping|trace|knock|doctor|exporter ...``: the tools of ``python -m netdiag.X``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        if args:
            return guard_pipe(lambda: print(_usage()) or EXIT_OK)
        print(_usage(), file=sys.stderr)
        return EXIT_USAGE
    if args[0] in ("-V", "--version"):
        return guard_pipe(lambda: print(version_text("netdiag")) or EXIT_OK)
    cmd = args.pop(0)
    entry = _COMMANDS.get(cmd)
    if entry is None:
        fail("netdiag", f"unknown command {cmd!r}; choose from {', '.join(_COMMANDS)}")
    try:
        mod = importlib.import_module(entry[0])
    except ImportError:
        fail("netdiag", f"{cmd} is not available in this version")
    return int(mod.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
