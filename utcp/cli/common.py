"""What every ``utcp`` command shares: flags, ``UTCP_*`` environment variables, address
parsing, the UDP endpoints a process uses, statistics, and the mapping from errors to one
line on stderr and a documented exit status.

Exit statuses (docs/cli/*.md repeat this table):

====  ==========================================================
0     success
1     other failure (data did not match, unexpected error)
2     usage error (unknown flag, missing argument)
3     malformed address (``ADDR:PORT``, port out of range)
4     unknown host (name resolution failed)
5     connection refused
6     timed out (connect timeout, retransmission limit, keepalive)
7     connection reset or broken by the peer
8     address already in use
9     other network error (unreachable, permission denied...)
130   interrupted (Ctrl-C)
====  ==========================================================

Environment: every long flag ``--some-flag`` can also be given as ``UTCP_SOME_FLAG`` (the
flag's name upper-cased, dashes turned into underscores); the command line wins. Switches
take ``1/true/yes/on`` or ``0/false/no/off``. Positional arguments have no variable.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import trio

import utcp
from utcp._api import race_attempts

log = logging.getLogger("utcp.cli")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_BAD_ADDRESS = 3
EXIT_UNKNOWN_HOST = 4
EXIT_REFUSED = 5
EXIT_TIMED_OUT = 6
EXIT_RESET = 7
EXIT_ADDRESS_IN_USE = 8
EXIT_NETWORK = 9
EXIT_INTERRUPTED = 130

ENV_PREFIX = "UTCP_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")

# Header sizes behind the MSS a given link MTU allows (WIRE.md "Sizes"): IP, UDP, TCP.
IPV4_HEADER = 20
IPV6_HEADER = 40
UDP_HEADER = 8
TCP_HEADER = 20
DEFAULT_CONNECT_TIMEOUT = 10.0
# A UDP datagram the kernel refuses to send (EMSGSIZE above the path MTU, unreachable) is
# looked for this often, and reported once.
SEND_ERROR_CHECK = 1.0
LINGER_TIMEOUT = 5.0
MAX_FINISHED = 1000
HAPPY_EYEBALLS_DELAY = 0.25  # RFC 8305 5: the recommended Connection Attempt Delay
TCP_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", 25)  # Linux's number


class CliError(Exception):
    """A failure the user gets as one line on stderr and exit status ``code``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ------------------------------------------------------------------ addresses


@dataclass(frozen=True)
class HostPort:
    """A parsed ``[ADDR:]PORT`` / ``HOST:PORT`` / ``[IPv6]:PORT``; host None means "any"."""

    host: str | None
    port: int

    def __str__(self) -> str:
        host = self.host or "*"
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"


def format_address(address: tuple[Any, ...]) -> str:
    """``1.2.3.4:80`` or ``[::1]:80``."""
    host, port = str(address[0]), int(address[1])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_port(text: str, *, allow_zero: bool = False) -> int:
    try:
        port = int(text, 10)
    except ValueError:
        raise CliError(EXIT_BAD_ADDRESS, f"bad port {text!r}: not a number") from None
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise CliError(EXIT_BAD_ADDRESS, f"bad port {text!r}: must be in {low}..65535")
    return port


def parse_host(text: str) -> str:
    """A host name or address; IPv6 literals may come in brackets."""
    host = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    if not host or any(c in host for c in "[] /"):
        raise CliError(EXIT_BAD_ADDRESS, f"bad host {text!r}")
    return host


def parse_hostport(text: str, *, host_optional: bool, allow_zero: bool = False) -> HostPort:
    """Parse ``HOST:PORT``, ``[IPv6]:PORT`` and, if ``host_optional``, a bare ``PORT``."""
    text = text.strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise CliError(EXIT_BAD_ADDRESS, f"bad address {text!r}: expected [IPv6]:PORT")
        host, port = text[1:close], text[close + 2 :]
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif ":" in text:
        raise CliError(
            EXIT_BAD_ADDRESS, f"bad address {text!r}: put IPv6 addresses in brackets, [::1]:PORT"
        )
    elif host_optional:
        host, port = "", text
    else:
        raise CliError(EXIT_BAD_ADDRESS, f"bad address {text!r}: expected HOST:PORT")
    if not host and not host_optional:
        raise CliError(EXIT_BAD_ADDRESS, f"bad address {text!r}: the host is missing")
    return HostPort(parse_host(host) if host else None, parse_port(port, allow_zero=allow_zero))


def mss_for_mtu(mtu: int, ipv6: bool) -> int:
    """The largest TCP payload whose UDP datagram fits a link of ``mtu`` bytes."""
    return mtu - (IPV6_HEADER if ipv6 else IPV4_HEADER) - UDP_HEADER - TCP_HEADER


# ------------------------------------------------------------------ flags and environment


def add_common_flags(parser: argparse.ArgumentParser, *, client: bool) -> None:
    """The flags every command takes (docs/cli/*.md, "Common flags")."""
    group = parser.add_argument_group("common options")
    group.add_argument(
        "--congestion",
        choices=utcp.available_congestion_controls(),
        help="congestion control (default: utcp's, cubic)",
    )
    size = group.add_mutually_exclusive_group()
    size.add_argument(
        "--mss", type=int, help="maximum segment size in bytes (default 1452 IPv4, 1432 IPv6)"
    )
    size.add_argument(
        "--mtu",
        type=int,
        help="link MTU the UDP datagrams must fit; derives the MSS (default 1500)",
    )
    group.add_argument("--pcap", metavar="FILE", help="record every datagram to a pcap file")
    group.add_argument(
        "--stats",
        action="store_true",
        help="print connection statistics on exit (SIGUSR1 prints them at any time)",
    )
    group.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="utcp's log level on stderr (default: %(default)s)",
    )
    group.add_argument("-q", "--quiet", action="store_true", help="print only errors and results")
    if client:
        group.add_argument(
            "--connect-timeout",
            type=float,
            default=DEFAULT_CONNECT_TIMEOUT,
            metavar="SECONDS",
            help="give up a connect after this long (default: %(default)s)",
        )


def apply_environment(parser: argparse.ArgumentParser, environ: dict[str, str]) -> None:
    """Give every long flag of ``parser`` and its subcommands the default ``UTCP_<FLAG>``
    from ``environ`` (the command line still wins)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                apply_environment(sub, environ)
            continue
        longs = [s for s in action.option_strings if s.startswith("--")]
        if not longs or action.dest == "help":
            continue
        name = ENV_PREFIX + longs[0][2:].upper().replace("-", "_")
        value = environ.get(name)
        if value is None:
            continue
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            lowered = value.strip().lower()
            if lowered not in _TRUE + _FALSE:
                parser.error(f"{name}={value!r}: expected 1/0, true/false, yes/no or on/off")
            on = lowered in _TRUE
            action.default = on if isinstance(action, argparse._StoreTrueAction) else not on
        else:
            action.default = value  # argparse converts string defaults with the flag's type
            action.required = False


def config_for(args: argparse.Namespace, *, ipv6: bool, **changes: Any) -> utcp.Config:
    """A ``utcp.Config`` from the common flags (and ``changes``) for one address family."""
    if args.congestion:
        changes["congestion_control"] = args.congestion
    if args.mss is not None:
        changes["mss"] = args.mss
    elif args.mtu is not None:
        changes["mss"] = mss_for_mtu(args.mtu, ipv6)
    connect_timeout = getattr(args, "connect_timeout", None)
    if connect_timeout is not None:
        if connect_timeout <= 0:
            raise CliError(EXIT_USAGE, "--connect-timeout must be positive")
        changes["connect_timeout"] = connect_timeout
    try:
        return utcp.Config(**changes)
    except ValueError as exc:
        flag = "--mtu" if args.mtu is not None else "option"
        raise CliError(EXIT_USAGE, f"bad {flag}: {exc}") from None


# ------------------------------------------------------------------ the process's endpoints


class Session:
    """The UDP endpoints one command uses and the streams it has open.

    Clients share one endpoint per address family (bound to the wildcard address): every
    connection of the process leaves from one UDP port, so a NAT keeps one binding for all
    of them. Servers get one endpoint per listening address. All of them write to the one
    ``--pcap`` file, if asked. ``--stats`` and SIGUSR1 report ``streams``.
    """

    def __init__(self, args: argparse.Namespace, prog: str, **config_changes: Any) -> None:
        self.args = args
        self.prog = prog
        self.quiet: bool = args.quiet
        self.configs = {
            ipv6: config_for(args, ipv6=ipv6, **config_changes) for ipv6 in (False, True)
        }
        self.endpoints: list[utcp.Endpoint] = []
        self._client_endpoints: dict[int, utcp.Endpoint] = {}
        self.streams: dict[utcp.UtcpStream, str] = {}
        # Closed connections' last statistics, for --stats (bounded: servers run for long).
        self.finished: deque[tuple[str, utcp.Statistics]] = deque(maxlen=MAX_FINISHED)
        self._send_errors_reported = False

    def info(self, message: str) -> None:
        """A status line on stderr, unless ``-q``."""
        if not self.quiet:
            print(f"{self.prog}: {message}", file=sys.stderr, flush=True)

    async def _open_endpoint(self, address: tuple[str, int]) -> utcp.Endpoint:
        ipv6 = ":" in address[0]
        first = self.endpoints[0] if self.endpoints else None
        # Every endpoint writes to the first one's pcap writer; aclose() closes the first
        # endpoint (which owns the file) last.
        pcap = first.pcap if first is not None else self.args.pcap
        try:
            endpoint = await utcp.open_endpoint(address, config=self.configs[ipv6], pcap=pcap)
        except OSError as exc:
            raise listen_error(exc, format_address(address)) from None
        self.endpoints.append(endpoint)
        return endpoint

    async def listen(self, where: HostPort) -> list[utcp.UtcpListener]:
        """utcp listeners on ``where``: every local address it resolves to, or both
        wildcards (0.0.0.0 and ::) when no host was given."""
        if where.host is None:
            addresses = [("0.0.0.0", where.port), ("::", where.port)]
        else:
            resolved = await resolve(where.host, port=where.port, passive=True)
            addresses = [address for _, address in resolved]
        listeners: list[utcp.UtcpListener] = []
        port = where.port
        for ip, _ in addresses:
            try:
                endpoint = await self._open_endpoint((ip, port))
            except CliError as exc:
                no_ipv6 = exc.code in (EXIT_NETWORK, EXIT_BAD_ADDRESS)
                if ip == "::" and where.host is None and no_ipv6:
                    continue  # no IPv6 on this machine
                raise
            listener = await utcp.listen_on(endpoint)
            listeners.append(listener)
            port = endpoint.local_address[1]  # port 0: every family on the port picked first
            self.info(f"listening on {format_address(endpoint.local_address)} (UDP)")
        return listeners

    async def _client_endpoint(self, family: int) -> utcp.Endpoint:
        endpoint = self._client_endpoints.get(family)
        if endpoint is None or endpoint.closed:
            wildcard = "::" if family == socket.AF_INET6 else "0.0.0.0"
            endpoint = await self._open_endpoint((wildcard, 0))
            self._client_endpoints[family] = endpoint
        return endpoint

    async def connect(self, host: str, port: int, **config_changes: Any) -> utcp.UtcpStream:
        """Connect to ``host``:``port`` (every address it resolves to, IPv6 and IPv4
        alternating, RFC 8305 staggered by 250 ms; the first to answer wins).

        Raises :class:`CliError` (refused, timed out, unknown host, network error)."""
        targets = await resolve(host, port=port)

        async def attempt(family: int, address: tuple[str, int]) -> utcp.UtcpStream:
            try:
                endpoint = await self._client_endpoint(family)
            except CliError as exc:  # e.g. no IPv6 here: the other family may still work
                raise OSError(exc.message) from None
            config = self.configs[family == socket.AF_INET6].replace(**config_changes)
            return await utcp.connect_on(endpoint, address, config=config)

        winner, errors = await race_attempts(targets, attempt, HAPPY_EYEBALLS_DELAY)
        if winner is None:
            raise connect_error(errors, f"{format_address((host, port))}")
        return winner

    @contextlib.contextmanager
    def tracking(self, stream: utcp.UtcpStream, name: str) -> Iterator[None]:
        """Count ``stream`` among the live streams (for SIGUSR1) while inside; its final
        statistics are kept for ``--stats``.

        The tools move bulk data, so the drop-in's TCP_NOTSENT_LOWAT of 16 KiB (trio's
        SocketStream default, which keeps a writer's queue short) is lifted to the whole
        send buffer: a large write then leaves as full-sized segments."""
        sndbuf = stream.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        if isinstance(sndbuf, int):
            stream.setsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT, sndbuf)
        self.streams[stream] = name
        try:
            yield
        finally:
            del self.streams[stream]
            if self.args.stats:
                self.finished.append((name, stream.statistics()))

    def print_statistics(self, file: TextIO, *, live_only: bool) -> None:
        rows = [(name, stream.statistics()) for stream, name in self.streams.items()]
        if not live_only:
            rows = [*self.finished, *rows]
        if not rows:
            print(f"{self.prog}: no connections", file=file, flush=True)
        for name, stats in rows:
            print(format_statistics(name, stats), file=file, flush=True)

    async def watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled: print statistics on SIGUSR1, and say once if the kernel refuses
        to send our datagrams (usually: larger than the path MTU)."""
        with trio.open_signal_receiver(signal.SIGUSR1) as signals:
            task_status.started()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_send_errors)
                async for _ in signals:
                    self.print_statistics(sys.stderr, live_only=True)

    async def _watch_send_errors(self) -> None:
        while not self._send_errors_reported:
            await trio.sleep(SEND_ERROR_CHECK)
            refused = sum(ep.transport.send_errors for ep in self.endpoints)
            if refused:
                self._send_errors_reported = True
                print(
                    f"{self.prog}: warning: the kernel refused to send {refused} UDP "
                    "datagram(s): too large for the path MTU (try a smaller --mtu) or "
                    "the network is unreachable",
                    file=sys.stderr,
                    flush=True,
                )

    async def aclose(self) -> None:
        for endpoint in reversed(self.endpoints):
            await endpoint.aclose()


async def resolve(
    host: str, *, port: int = 0, passive: bool = False
) -> list[tuple[int, tuple[str, int]]]:
    """(family, (ip, port)) for every IPv4/IPv6 address of ``host``, families alternating
    (RFC 8305 4). Raises :class:`CliError` for an unknown host."""
    flags = socket.AI_PASSIVE if passive else 0
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM, flags=flags)
    except socket.gaierror as exc:
        raise CliError(EXIT_UNKNOWN_HOST, f"unknown host {host!r}: {exc.strerror}") from None
    targets: list[tuple[int, tuple[str, int]]] = []
    for family, _type, _proto, _canon, sockaddr in infos:
        target = (int(family), (str(sockaddr[0]), int(sockaddr[1])))
        if family in (socket.AF_INET, socket.AF_INET6) and target not in targets:
            targets.append(target)
    if not targets:
        raise CliError(EXIT_UNKNOWN_HOST, f"unknown host {host!r}: no IPv4 or IPv6 address")
    first = [t for t in targets if t[0] == targets[0][0]]
    second = [t for t in targets if t[0] != targets[0][0]]
    out: list[tuple[int, tuple[str, int]]] = []
    for i in range(max(len(first), len(second))):
        out.extend(x[i] for x in (first, second) if i < len(x))
    return out


async def linger(stream: utcp.UtcpStream, timeout: float = LINGER_TIMEOUT) -> None:
    """Close ``stream`` and wait (bounded) until the peer has acknowledged our FIN, so that
    closing the endpoint afterwards cannot cut off data still in flight."""
    await stream.aclose()
    with trio.move_on_after(timeout):
        while stream.statistics().state not in ("FIN-WAIT-2", "TIME-WAIT", "CLOSED"):
            await trio.sleep(0.01)


# ------------------------------------------------------------------ statistics


def format_statistics(name: str, s: utcp.Statistics) -> str:
    """A few lines a user can tune by (TCP_INFO-like)."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.2f} ms"

    ssthresh = "-" if s.ssthresh >= 1 << 40 else f"{s.ssthresh} B"  # not yet set
    fastopen = ""
    if any(s.fastopen.values()):  # RFC 7413 counters, for a connection that used Fast Open
        counts = ", ".join(f"{key.replace('_', ' ')} {n}" for key, n in s.fastopen.items())
        fastopen = f"\n  fast open: {counts}"
    return (
        f"{name}: state {s.state}, {s.congestion_control}, mss {s.mss}\n"
        f"  rtt {ms(s.srtt)} (min {ms(s.min_rtt)}, var {ms(s.rttvar)}), rto {ms(s.rto)}\n"
        f"  cwnd {s.cwnd} B, ssthresh {ssthresh}, in flight {s.bytes_in_flight} B, "
        f"peer window {s.peer_window} B\n"
        f"  sent {s.bytes_sent} B in {s.segments_sent} segments, received "
        f"{s.bytes_received} B in {s.segments_received} segments\n"
        f"  retransmits {s.retransmits} ({s.bytes_retransmitted} B; fast {s.fast_retransmits}, "
        f"rto {s.rto_expiries}), lost {s.lost}, reordering {s.reordering}, "
        f"drops {sum(s.drops.values())}{fastopen}"
    )


# ------------------------------------------------------------------ errors


def _leaves(exc: BaseException) -> list[BaseException]:
    group: tuple[BaseException, ...] | None = getattr(exc, "exceptions", None)  # a group
    if group is not None:
        return [leaf for sub in group for leaf in _leaves(sub)]
    return [exc]


def _cause(exc: BaseException) -> BaseException:
    """The OS-level reason behind a trio Broken/Closed error, if it chained one."""
    while isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError)):
        if exc.__cause__ is None:
            break
        exc = exc.__cause__
    return exc


def classify(exc: BaseException) -> tuple[int, str]:
    """(exit status, one-line message) for any exception a command let escape."""
    leaves = [leaf for leaf in _leaves(exc) if not isinstance(leaf, trio.Cancelled)] or [exc]
    for leaf in leaves:
        if isinstance(leaf, CliError):
            return leaf.code, leaf.message
    leaf = _cause(leaves[0])
    if isinstance(leaf, KeyboardInterrupt):
        return EXIT_INTERRUPTED, "interrupted"
    if isinstance(leaf, ConnectionRefusedError):
        return EXIT_REFUSED, f"connection refused: {leaf}"
    if isinstance(leaf, (TimeoutError, trio.TooSlowError)):
        return EXIT_TIMED_OUT, f"timed out: {leaf}"
    if isinstance(leaf, (ConnectionResetError, ConnectionAbortedError, trio.BrokenResourceError)):
        return EXIT_RESET, f"connection reset: {leaf}"
    if isinstance(leaf, OSError):
        if leaf.errno == errno.EADDRINUSE:
            return EXIT_ADDRESS_IN_USE, f"address already in use: {leaf}"
        return EXIT_NETWORK, f"network error: {leaf}"
    return EXIT_FAILURE, f"{type(leaf).__name__}: {leaf}"


def listen_error(exc: OSError, where: str) -> CliError:
    if exc.errno == errno.EADDRINUSE:
        return CliError(EXIT_ADDRESS_IN_USE, f"cannot listen on {where}: address already in use")
    if exc.errno == errno.EADDRNOTAVAIL:
        return CliError(EXIT_BAD_ADDRESS, f"cannot listen on {where}: not a local address")
    return CliError(EXIT_NETWORK, f"cannot listen on {where}: {exc.strerror or exc}")


def connect_error(errors: list[OSError], where: str) -> CliError:
    if errors and all(isinstance(e, ConnectionRefusedError) for e in errors):
        return CliError(
            EXIT_REFUSED, f"connection refused by {where} (is a utcp server listening there?)"
        )
    if errors and all(isinstance(e, TimeoutError) for e in errors):
        return CliError(
            EXIT_TIMED_OUT,
            f"no answer from {where} (timed out; utcp runs over UDP: is the server up, and "
            "does a firewall pass UDP to that port?)",
        )
    reasons = "; ".join(str(e) for e in errors) or "no address to try"
    return CliError(EXIT_NETWORK, f"cannot connect to {where}: {reasons}")


# ------------------------------------------------------------------ running a command


def setup_logging(args: argparse.Namespace) -> None:
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


@contextlib.asynccontextmanager
async def session(
    args: argparse.Namespace, prog: str, **config_changes: Any
) -> AsyncIterator[Session]:
    """A :class:`Session` with its watcher running; closed (and ``--stats`` printed) on exit."""
    sess = Session(args, prog, **config_changes)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sess.watch)
            try:
                yield sess
            finally:
                nursery.cancel_scope.cancel()
    finally:
        if args.stats:
            sess.print_statistics(sys.stderr, live_only=False)
        with trio.CancelScope(shield=True):
            await sess.aclose()


def run(args: argparse.Namespace, prog: str, main: Callable[[], Awaitable[int]]) -> int:
    """Run ``main`` under trio; turn what escapes into one line on stderr and an exit code.
    SIGINT and SIGTERM end the command quietly (status 130)."""
    setup_logging(args)

    async def guarded() -> int:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                result: list[int] = []

                async def body() -> None:
                    result.append(await main())
                    nursery.cancel_scope.cancel()

                nursery.start_soon(body)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    return EXIT_INTERRUPTED
        return result[0] if result else EXIT_INTERRUPTED

    started = time.monotonic()
    try:
        return trio.run(guarded)
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        code, message = classify(exc)
        if code == EXIT_FAILURE:
            log.debug("unexpected failure after %.3f s", time.monotonic() - started, exc_info=exc)
        if code != EXIT_INTERRUPTED:
            print(f"{prog}: {message}", file=sys.stderr, flush=True)
        return code
