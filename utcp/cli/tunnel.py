"""``utcp tunnel``: carry kernel-TCP connections over utcp, for paths where only UDP passes.

::

    kernel TCP client -> tunnel client --(utcp over UDP)--> tunnel server -> kernel TCP service

``tunnel client --listen 127.0.0.1:PORT --to SERVER:UPORT`` accepts kernel-TCP connections
and gives each its own utcp connection to the tunnel server, which opens a kernel-TCP
connection to ``--to`` and copies both ways, half-closes included. One utcp connection per
tunnelled connection (not a multiplex over one): a stalled or lossy transfer never holds up
the others' bytes (no head-of-line blocking across connections), each gets its own
congestion control and statistics, and closing one is a plain FIN or RST. They all leave the
client from one UDP port, so a NAT keeps a single binding for the lot.

The client needs no server to start: it listens at once and opens each utcp connection when
a kernel connection arrives, retrying with exponential backoff (up to ``--retry-for``) while
the server is down. Keepalive is on for every utcp connection, at ``--keepalive`` seconds of
silence (default 15 s, under the ~30 s after which many NATs drop an idle UDP binding).

With ``--tls-cert/--tls-key`` on the server and ``--tls-ca``, ``--tls-pin`` or ``--tls`` on
the client, the utcp connection carries TLS (``trio.SSLStream``). TLS has no half-close, so
inside TLS each direction is a series of frames (4-byte length, then payload) and a frame of
length 0 stands for end of file. Without TLS the tunnel is as open as plain TCP: anyone on the
path can read it, and anyone who can reach the server's port can use the service behind it.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import re
import ssl
import struct
from typing import Any

import trio

import utcp

from . import common
from .common import CliError, HostPort, Session, format_address

CHUNK = 65536
DEFAULT_KEEPALIVE = 15.0
# Unanswered probes before a silent peer is declared dead (RFC 9293 3.8.4 leaves the count
# open; Linux uses 9): 15 s idle + 4 x 15 s keeps detection near a minute.
KEEPALIVE_COUNT = 4
DEFAULT_RETRY_FOR = 60.0
DEFAULT_CLIENT_CONNECT_TIMEOUT = 5.0
RETRY_FIRST = 0.2
RETRY_MAX = 5.0
HANDSHAKE_TIMEOUT = 15.0
FRAME = struct.Struct("!I")
PEM_CERTIFICATE = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
MAX_FRAME = 1 << 20


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tunnel",
        help="carry kernel-TCP connections over utcp (server and client)",
        description="A TCP tunnel over utcp: run 'tunnel server' next to the service and "
        "'tunnel client' next to its users.",
    )
    roles = parser.add_subparsers(dest="role", metavar="ROLE", required=True)

    server = roles.add_parser(
        "server",
        help="accept utcp connections and hand them to a kernel-TCP service",
        description="Accept utcp connections on --listen and connect each to --to over kernel "
        "TCP. Without --tls-cert/--tls-key the tunnel is as open as plain TCP.",
    )
    server.add_argument(
        "--listen", required=True, metavar="[ADDR:]PORT", help="utcp (UDP) address to listen on"
    )
    server.add_argument("--to", required=True, metavar="HOST:PORT", help="the kernel-TCP service")
    server.add_argument("--tls-cert", metavar="FILE", help="PEM certificate (chain) to offer")
    server.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    add_tunnel_flags(server)
    common.add_common_flags(server, client=False)
    server.set_defaults(func=run_server)

    client = roles.add_parser(
        "client",
        help="accept kernel-TCP connections and carry each over utcp",
        description="Accept kernel-TCP connections on --listen (127.0.0.1 unless an address "
        "is given) and carry each over its own utcp connection to the tunnel server --to.",
    )
    client.add_argument(
        "--listen", required=True, metavar="[ADDR:]PORT", help="kernel-TCP address to listen on"
    )
    client.add_argument("--to", required=True, metavar="HOST:PORT", help="the tunnel server")
    tls = client.add_mutually_exclusive_group()
    tls.add_argument("--tls-ca", metavar="FILE", help="TLS, server verified against this CA")
    tls.add_argument(
        "--tls-pin",
        metavar="SHA256",
        help="TLS, server certificate must have this SHA-256 fingerprint (hex, colons optional)",
    )
    tls.add_argument(
        "--tls", action="store_true", help="TLS, server verified against the system's CAs"
    )
    client.add_argument(
        "--tls-name", metavar="NAME", help="name the server certificate must carry (default: HOST)"
    )
    client.add_argument(
        "--retry-for",
        type=float,
        default=DEFAULT_RETRY_FOR,
        metavar="SECONDS",
        help="keep retrying an unreachable server this long per connection (default: %(default)s)",
    )
    add_tunnel_flags(client)
    common.add_common_flags(client, client=True)
    client.set_defaults(func=run_client, connect_timeout=DEFAULT_CLIENT_CONNECT_TIMEOUT)


def add_tunnel_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keepalive",
        type=float,
        default=DEFAULT_KEEPALIVE,
        metavar="SECONDS",
        help="keepalive after this much silence on a utcp connection, 0 = off "
        "(default: %(default)s, below common 30 s NAT timeouts)",
    )


def leg_config(args: argparse.Namespace) -> dict[str, Any]:
    """The utcp-leg settings both ends use, set explicitly rather than left to defaults."""
    if args.keepalive < 0:
        raise CliError(common.EXIT_USAGE, "--keepalive must be >= 0")
    changes: dict[str, Any] = {"nodelay": True}  # trio sets TCP_NODELAY on the kernel legs
    # RFC 9293 3.8.4 (MUST-24) has keep-alives off by default; a tunnel turns them on on
    # purpose: its UDP path usually crosses a NAT that forgets an idle binding in ~30 s, and a
    # probe is the only way an idle end learns that the other one is gone.
    changes["keepalive"] = args.keepalive > 0
    if args.keepalive > 0:
        changes["keepalive_idle"] = args.keepalive
        changes["keepalive_interval"] = args.keepalive
        changes["keepalive_count"] = KEEPALIVE_COUNT
    return changes


# ------------------------------------------------------------------ copying


class FramedStream(trio.abc.HalfCloseableStream):
    """Half-close over a stream that has none (``trio.SSLStream``): each ``send_all`` is
    sent as length-prefixed frames, and an empty frame means end of file."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._buffer = bytearray()
        self._remaining = 0  # payload bytes left in the current frame
        self._eof = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        for start in range(0, len(view), MAX_FRAME):
            piece = view[start : start + MAX_FRAME]
            await self.stream.send_all(FRAME.pack(len(piece)) + bytes(piece))

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_all(FRAME.pack(0))

    async def _fill(self) -> None:
        data = await self.stream.receive_some(CHUNK)
        if not data:
            if self._buffer or self._remaining:
                raise trio.BrokenResourceError("the tunnel peer closed inside a frame")
            raise trio.BrokenResourceError("the tunnel peer closed without end of file")
        self._buffer += data

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        limit = CHUNK if max_bytes is None else max_bytes
        while not self._eof:
            if self._remaining:
                if not self._buffer:
                    await self._fill()
                take = min(self._remaining, limit, len(self._buffer))
                out = bytes(self._buffer[:take])
                del self._buffer[:take]
                self._remaining -= take
                return out
            while len(self._buffer) < FRAME.size:
                await self._fill()
            (length,) = FRAME.unpack_from(self._buffer)
            del self._buffer[: FRAME.size]
            if length > MAX_FRAME:
                raise trio.BrokenResourceError(f"tunnel frame of {length} bytes is too large")
            if length == 0:
                self._eof = True
            self._remaining = length
        await trio.lowlevel.checkpoint()
        return b""

    async def aclose(self) -> None:
        await self.stream.aclose()


async def splice(a: trio.abc.HalfCloseableStream, b: trio.abc.HalfCloseableStream) -> int:
    """Copy both ways until both have ended, passing each end of file on; close both. The
    number of bytes copied."""
    copied = 0

    async def one_way(src: trio.abc.ReceiveStream, dst: trio.abc.HalfCloseableStream) -> None:
        nonlocal copied
        while True:
            data = await src.receive_some(CHUNK)
            if not data:
                break
            await dst.send_all(data)
            copied += len(data)
        await dst.send_eof()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(one_way, a, b)
            nursery.start_soon(one_way, b, a)
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(common.LINGER_TIMEOUT):
            await a.aclose()
            await b.aclose()
    return copied


def describe(exc: BaseException) -> str:
    return common.classify(exc)[1]


# ------------------------------------------------------------------ TLS


def fingerprint(cert_der: bytes) -> str:
    digest = hashlib.sha256(cert_der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def certificate_fingerprint(path: str) -> str:
    with open(path) as f:
        match = re.search(
            r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", f.read(), re.S
        )
    if match is None:
        raise CliError(common.EXIT_USAGE, f"{path}: no PEM certificate in it")
    return fingerprint(ssl.PEM_cert_to_DER_cert(match.group(0)))


def server_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.tls_cert and not args.tls_key:
        return None
    if not (args.tls_cert and args.tls_key):
        raise CliError(common.EXIT_USAGE, "--tls-cert and --tls-key go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(common.EXIT_USAGE, f"cannot load the TLS certificate: {exc}") from None
    return context


def client_tls(args: argparse.Namespace) -> tuple[ssl.SSLContext | None, str | None]:
    """The client's TLS context and the pinned fingerprint (normalised), if any."""
    if args.tls_pin:
        pin = args.tls_pin.replace(":", "").upper()
        if not re.fullmatch(r"[0-9A-F]{64}", pin):
            raise CliError(common.EXIT_USAGE, "--tls-pin wants 64 hex digits (a SHA-256)")
        context = ssl.create_default_context()
        # Pinning replaces the CA and name checks: the fingerprint is compared after the
        # handshake, before any byte is tunnelled.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context, pin
    if args.tls_ca or args.tls:
        try:
            return ssl.create_default_context(cafile=args.tls_ca), None
        except (OSError, ssl.SSLError) as exc:
            raise CliError(common.EXIT_USAGE, f"cannot load --tls-ca: {exc}") from None
    return None, None


# ------------------------------------------------------------------ server


def run_server(args: argparse.Namespace) -> int:
    prog = "utcp tunnel server"

    async def main() -> int:
        where = common.parse_hostport(args.listen, host_optional=True, allow_zero=True)
        target = common.parse_hostport(args.to, host_optional=False)
        context = server_tls(args)
        async with common.session(args, prog, **leg_config(args)) as sess:
            listeners = await sess.listen(where)
            if context is None:
                sess.info("no TLS: the tunnel is as open as plain TCP")
            else:
                sess.info(f"TLS certificate SHA-256 {certificate_fingerprint(args.tls_cert)}")
            sess.info(f"forwarding to {target} (kernel TCP)")
            await serve(sess, listeners, target, context)
        return common.EXIT_OK

    return common.run(args, prog, main)


async def serve(
    sess: Session,
    listeners: list[utcp.UtcpListener],
    target: HostPort,
    context: ssl.SSLContext | None,
) -> None:
    counter = 0

    async def handler(stream: utcp.UtcpStream) -> None:
        nonlocal counter
        counter += 1
        name = f"tunnel #{counter} from {format_address(stream.getpeername())}"
        with sess.tracking(stream, name):
            leg: trio.abc.HalfCloseableStream = stream
            try:
                if context is not None:
                    tls = trio.SSLStream(stream, context, server_side=True)
                    with trio.fail_after(HANDSHAKE_TIMEOUT):
                        await tls.do_handshake()
                    leg = FramedStream(tls)
                assert target.host is not None
                kernel = await trio.open_tcp_stream(target.host, target.port)
            except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                sess.info(f"{name}: closed: {describe(exc)}")
                await stream.aclose()
                return
            sess.info(f"{name}: connected to {target}")
            try:
                copied = await splice(leg, kernel)
                sess.info(f"{name}: done, {copied} bytes")
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                sess.info(f"{name}: broken: {describe(exc)}")

    await trio.serve_listeners(handler, listeners)


# ------------------------------------------------------------------ client


def run_client(args: argparse.Namespace) -> int:
    prog = "utcp tunnel client"

    async def main() -> int:
        where = common.parse_hostport(args.listen, host_optional=True, allow_zero=True)
        server = common.parse_hostport(args.to, host_optional=False)
        context, pin = client_tls(args)
        if args.retry_for < 0:
            raise CliError(common.EXIT_USAGE, "--retry-for must be >= 0")
        host = where.host or "127.0.0.1"
        try:
            listeners = await trio.open_tcp_listeners(where.port, host=host)
        except OSError as exc:
            raise common.listen_error(exc, str(HostPort(host, where.port))) from None
        async with common.session(args, prog, **leg_config(args)) as sess:
            for listener in listeners:
                sockname = listener.socket.getsockname()
                sess.info(f"listening on {format_address(sockname)} (kernel TCP)")
            sess.info(f"tunnelling to {server} (utcp over UDP{', TLS' if context else ''})")

            async def handler(kernel: trio.SocketStream) -> None:
                await carry(sess, kernel, server, context, pin)

            await trio.serve_listeners(handler, listeners)
        return common.EXIT_OK

    return common.run(args, prog, main)


async def connect_with_retry(sess: Session, server: HostPort, name: str) -> utcp.UtcpStream:
    """A utcp connection to the tunnel server, retried with exponential backoff while the
    server refuses or does not answer, for up to ``--retry-for`` seconds."""
    assert server.host is not None
    give_up = trio.current_time() + sess.args.retry_for
    delay = RETRY_FIRST
    while True:
        try:
            return await sess.connect(server.host, server.port)
        except CliError as exc:
            retryable = exc.code in (common.EXIT_REFUSED, common.EXIT_TIMED_OUT)
            if not retryable or trio.current_time() + delay > give_up:
                raise
            sess.info(f"{name}: {exc.message}; retrying in {delay:.1f} s")
        await trio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX)


async def carry(
    sess: Session,
    kernel: trio.SocketStream,
    server: HostPort,
    context: ssl.SSLContext | None,
    pin: str | None,
) -> None:
    name = f"connection from {format_address(kernel.socket.getpeername())}"
    try:
        stream = await connect_with_retry(sess, server, name)
    except CliError as exc:
        sess.info(f"{name}: giving up: {exc.message}")
        await kernel.aclose()
        return
    with sess.tracking(stream, name):
        leg: trio.abc.HalfCloseableStream = stream
        try:
            if context is not None:
                leg = await tls_handshake(stream, context, server, pin, sess.args.tls_name)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, CliError) as exc:
            message = exc.message if isinstance(exc, CliError) else describe(exc)
            sess.info(f"{name}: TLS failed: {message}")
            await stream.aclose()
            await kernel.aclose()
            return
        sess.info(f"{name}: tunnelled as {format_address(stream.getsockname())}")
        try:
            copied = await splice(kernel, leg)
            sess.info(f"{name}: done, {copied} bytes")
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            sess.info(f"{name}: broken: {describe(exc)}")


async def tls_handshake(
    stream: utcp.UtcpStream,
    context: ssl.SSLContext,
    server: HostPort,
    pin: str | None,
    tls_name: str | None,
) -> FramedStream:
    tls = trio.SSLStream(stream, context, server_hostname=tls_name or server.host)
    with trio.fail_after(HANDSHAKE_TIMEOUT):
        await tls.do_handshake()
    if pin is not None:
        der = tls.getpeercert(binary_form=True)
        seen = fingerprint(der or b"").replace(":", "")
        if not hmac.compare_digest(seen, pin):
            await tls.aclose()
            raise CliError(common.EXIT_FAILURE, f"server certificate SHA-256 {seen} is not pinned")
    return FramedStream(tls)
