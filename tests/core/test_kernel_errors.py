"""Kernel errors (ICMP errors from the error queue, failed sends) reaching their connection.

Crafted ``KernelError`` records, no sockets: the host matches each one to a connection by
4-tuple (RFC 5927 4.1), the connection checks the quoted sequence number and maps the error
as RFC 1122 4.2.3.9 and RFC 5461 do. Virtual times in seconds.
"""

from __future__ import annotations

import errno
import logging

import pytest

from utcp._config import Config
from utcp._connection import Connection
from utcp._errors import ORIGIN_ICMP, ORIGIN_LOCAL, ConnectionTimedOut, KernelError
from utcp._events import ConnectionFailed
from utcp._host import Host
from utcp._kernel_errors import PORT_UNREACHABLE_COUNT, SYN_SOFT_ERROR_GRACE
from utcp._state import State
from utcp._wire import ACK, SYN, Segment, decode_untrusted, encode

OURS = ("192.0.2.1", 5000)
PEER = ("192.0.2.2", 6000)
OTHER_PEER = ("192.0.2.3", 6000)
CONFIG = Config(initial_rto=1.0, max_retransmissions=3, keepalive=False, pacing=False)
ICMP_PORT_UNREACHABLE = (3, 3)
ICMP_HOST_UNREACHABLE = (3, 1)


def make_host() -> Host:
    return Host(CONFIG, address=OURS, isn_key=b"k" * 16)


def icmp(conn: Connection, code: int, seq: int | None = None, **kw: object) -> KernelError:
    """The error the kernel queues when our segment to ``conn``'s peer draws an ICMP error:
    the quote is our TCP header (our port, the peer's port, the sequence number)."""
    icmp_type, icmp_code = ICMP_PORT_UNREACHABLE if code == errno.ECONNREFUSED else (3, 1)
    seg = Segment(conn.local_port, conn.remote_port, conn.iss if seq is None else seq, 0, ACK, 0)
    assert conn.remote_address is not None
    fields: dict[str, object] = {
        "origin": ORIGIN_ICMP,
        "icmp_type": icmp_type,
        "icmp_code": icmp_code,
        "quoted": encode(seg)[:20],
    }
    fields.update(kw)
    return KernelError(conn.remote_address, code, **fields)  # type: ignore[arg-type]


def connecting(host: Host, peer: tuple[str, int] = PEER) -> Connection:
    conn = host.connect(peer, 0.0)
    assert [decode_untrusted(d).flags for d, _ in host.datagrams_to_send(0.0)]
    return conn


def established(host: Host) -> tuple[Connection, Host]:
    """A connection of ``host`` established with a real peer host, with data in flight
    (sent at t=1, never delivered)."""
    conn = host.connect(PEER, 0.0)
    server = Host(CONFIG, address=PEER, isn_key=b"s" * 16)
    server.listen(PEER[1])
    pump(host, server, 0.0)
    pump(server, host, 0.05)
    pump(host, server, 0.1)
    assert conn.state is State.ESTABLISHED
    conn.send(b"x" * 3000)
    host.touch(conn)  # an application call: the host flushes only what it is told about
    assert host.datagrams_to_send(1.0)
    while conn.next_event() is not None:
        pass
    return conn, server


def pump(src: Host, dst: Host, now: float) -> None:
    dst.receive_datagrams(src.datagrams_to_send(now), now)


def failed(conn: Connection) -> list[Exception]:
    events = []
    while (ev := conn.next_event()) is not None:
        events.append(ev)
    return [ev.error for ev in events if isinstance(ev, ConnectionFailed)]


# ---------------------------------------------------------------------------- matching


def test_port_unreachable_quoting_our_syn_refuses_the_connect() -> None:
    host = make_host()
    conn = connecting(host)
    host.handle_kernel_error(icmp(conn, errno.ECONNREFUSED), 0.01)
    assert conn.state is State.CLOSED
    (error,) = failed(conn)
    assert isinstance(error, ConnectionRefusedError)
    assert host.stats.kernel_errors == 1 and host.stats.kernel_errors_unmatched == 0
    assert not host.connections


def with_quote(err: KernelError, quoted: bytes | None, dest: tuple[str, int] = PEER) -> KernelError:
    return KernelError(dest, err.errno, err.origin, err.icmp_type, err.icmp_code, quoted)


def ports(lport: int, rport: int, rest: bytes) -> bytes:
    return lport.to_bytes(2, "big") + rport.to_bytes(2, "big") + rest


@pytest.mark.parametrize("what", ["address", "no-quote-other-address", "our-port", "peer-port"])
def test_error_matching_no_connection_changes_nothing(what: str) -> None:
    host = make_host()
    conn = connecting(host)
    err = icmp(conn, errno.ECONNREFUSED)
    assert err.quoted is not None
    crafted = {
        "address": with_quote(err, err.quoted, OTHER_PEER),
        "no-quote-other-address": with_quote(err, None, OTHER_PEER),
        "our-port": with_quote(err, ports(conn.local_port + 1, PEER[1], err.quoted[4:])),
        "peer-port": with_quote(err, ports(conn.local_port, PEER[1] + 1, err.quoted[4:])),
    }[what]
    host.handle_kernel_error(crafted, 0.01)
    assert conn.state is State.SYN_SENT and conn.error is None and conn.soft_error is None
    assert host.stats.kernel_errors_unmatched == 1
    assert host.stats.drops == {"kernel error for no connection": 1}


def test_error_without_quote_goes_to_the_only_connection_to_that_address() -> None:
    host = make_host()
    conn = connecting(host)
    host.handle_kernel_error(KernelError(PEER, errno.ECONNREFUSED, ORIGIN_ICMP, 3, 3), 0.01)
    assert conn.state is State.CLOSED
    assert isinstance(conn.error, ConnectionRefusedError)


def test_error_without_quote_is_dropped_when_several_connections_share_the_address() -> None:
    host = make_host()
    first = connecting(host)
    second = host.connect(PEER, 0.0, remote_port=7000)
    host.datagrams_to_send(0.0)
    host.handle_kernel_error(KernelError(PEER, errno.ECONNREFUSED, ORIGIN_ICMP, 3, 3), 0.01)
    assert first.state is State.SYN_SENT and second.state is State.SYN_SENT
    assert host.stats.kernel_errors_unmatched == 1


def test_quote_of_eight_bytes_is_enough_to_match_and_check() -> None:
    host = make_host()
    conn = connecting(host)
    err = icmp(conn, errno.ECONNREFUSED)
    assert err.quoted is not None
    host.handle_kernel_error(with_quote(err, err.quoted[:8]), 0.0)
    assert isinstance(conn.error, ConnectionRefusedError)


# ---------------------------------------------------------------------------- RFC 5927 window


def test_syn_sent_error_quoting_another_sequence_number_is_ignored() -> None:
    # RFC 5927 4.1: in SYN-SENT only our SYN (SEQ = ISS) can have drawn the error.
    host = make_host()
    conn = connecting(host)
    for seq in ((conn.iss + 1) & 0xFFFFFFFF, (conn.iss - 1) & 0xFFFFFFFF, 12345):
        host.handle_kernel_error(icmp(conn, errno.ECONNREFUSED, seq=seq), 0.01)
    assert conn.state is State.SYN_SENT and conn.error is None
    assert host.stats.kernel_errors_ignored == 3
    assert conn.stats.drops == {"kernel error: sequence number not in flight (RFC 5927)": 3}


def test_established_error_outside_snd_una_to_snd_nxt_is_ignored() -> None:
    host = make_host()
    conn, _server = established(host)
    una, nxt = conn.snd_una, conn.snd_nxt
    assert (nxt - una) & 0xFFFFFFFF == conn.bytes_in_flight > 0
    for seq in ((una - 2) & 0xFFFFFFFF, (nxt + 1) & 0xFFFFFFFF, (una + 2**31) & 0xFFFFFFFF):
        for t in (1.1, 5.0, 9.0, 13.0):
            host.handle_kernel_error(icmp(conn, errno.ECONNREFUSED, seq=seq), t)
    assert conn.state is State.ESTABLISHED and conn.error is None
    assert host.stats.kernel_errors_ignored == 12
    assert conn.stats.kernel_errors == 0


@pytest.mark.parametrize("where", ["snd_una", "middle", "snd_nxt", "snd_una-1"])
def test_established_error_quoting_a_segment_in_flight_counts(where: str) -> None:
    host = make_host()
    conn, _server = established(host)
    seq = {
        "snd_una": conn.snd_una,
        "middle": (conn.snd_una + 1452) & 0xFFFFFFFF,
        "snd_nxt": conn.snd_nxt,  # a pure ACK's SEQ
        "snd_una-1": (conn.snd_una - 1) & 0xFFFFFFFF,  # a keep-alive's or window probe's
    }[where]
    host.handle_kernel_error(icmp(conn, errno.EHOSTUNREACH, seq=seq), 1.1)
    assert conn.soft_error == errno.EHOSTUNREACH
    assert conn.stats.kernel_errors == 1 and host.stats.kernel_errors_ignored == 0


def test_error_for_a_connection_in_time_wait_is_ignored() -> None:
    host = make_host()
    conn = connecting(host)
    conn.state = State.TIME_WAIT  # a shortcut past the handshake and close: no real edge
    assert not conn.on_kernel_error(1.0, errno.ECONNREFUSED)
    assert conn.state is State.TIME_WAIT and conn.error is None


# ---------------------------------------------------------------------------- mapping


@pytest.mark.parametrize("code", [errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EACCES])
def test_syn_sent_unreachable_fails_the_connect_after_the_grace(code: int) -> None:
    # RFC 1122 4.2.3.9: a soft error; RFC 5461 4: the connect fails on it, after the
    # grace (SYNs at 0, 1 and 3 s with a 1 s initial RTO each drew it).
    host = make_host()
    conn = connecting(host)
    for t in (0.0, 1.0):
        host.handle_kernel_error(icmp(conn, code), t)
        assert conn.state is State.SYN_SENT and conn.soft_error == code
    assert failed(conn) == []
    host.handle_kernel_error(icmp(conn, code), SYN_SOFT_ERROR_GRACE)
    assert conn.state is State.CLOSED
    (error,) = failed(conn)
    assert isinstance(error, OSError) and error.errno == code
    assert not isinstance(error, TimeoutError)


def test_syn_sent_grace_counts_from_the_answered_syn_not_from_when_its_error_was_read() -> None:
    # SYNs at 0, 1 and 3 s (1 s initial RTO). The first error is read 10 ms late (a busy
    # endpoint), the third at once: the errors answered SYNs 3 s apart, so the third fails
    # the connect, however late the first was read.
    host = make_host()
    conn = connecting(host)
    host.handle_kernel_error(icmp(conn, errno.EHOSTUNREACH), 0.010)
    for t, read_at in ((1.0, 1.002), (3.0, 3.0001)):
        assert conn.state is State.SYN_SENT
        host.handle_timer(t)
        assert [decode_untrusted(d).flags for d, _ in host.datagrams_to_send(t)] == [SYN]
        host.handle_kernel_error(icmp(conn, errno.EHOSTUNREACH), read_at)
    assert conn.state is State.CLOSED
    (error,) = failed(conn)
    assert isinstance(error, OSError) and error.errno == errno.EHOSTUNREACH


def test_syn_sent_unreachable_from_a_failed_send_counts_the_same() -> None:
    # A sendto that failed at once (no route): the quote is the whole SYN we tried to send.
    host = make_host()
    conn = host.connect(PEER, 0.0)
    ((syn, addr),) = host.datagrams_to_send(0.0)
    for t in (0.0, 1.0, 3.0):
        host.handle_kernel_error(KernelError(addr, errno.ENETUNREACH, quoted=syn), t)
    assert isinstance(conn.error, OSError) and conn.error.errno == errno.ENETUNREACH


def test_syn_sent_connect_timeout_names_the_soft_error() -> None:
    host = make_host()
    config = CONFIG.replace(connect_timeout=2.0)
    conn = host.connect(PEER, 0.0, config=config)
    host.datagrams_to_send(0.0)
    host.handle_kernel_error(icmp(conn, errno.EHOSTUNREACH), 0.5)
    host.handle_timer(2.0)
    (error,) = failed(conn)
    assert isinstance(error, ConnectionTimedOut)
    assert "connect timeout" in str(error) and "host is unreachable" in str(error)


def test_established_unreachable_is_soft_and_named_by_the_timeout() -> None:
    host = make_host()
    conn, _server = established(host)
    host.handle_kernel_error(icmp(conn, errno.EHOSTUNREACH, seq=conn.snd_una), 1.2)
    assert conn.state is State.ESTABLISHED and conn.error is None
    assert conn.soft_error == errno.EHOSTUNREACH
    run_timers(host, conn, 1.2)
    (error,) = failed(conn)
    assert isinstance(error, ConnectionTimedOut)
    assert "retransmission limit" in str(error) and "host is unreachable" in str(error)


def run_timers(host: Host, conn: Connection, now: float) -> None:
    for _ in range(50):  # bounded: the retransmission limit (3) ends it long before
        deadline = conn.next_timer()
        if conn.state is State.CLOSED or deadline is None:
            return
        now = max(now, deadline)
        host.handle_timer(now)
        host.datagrams_to_send(now)


def peer_speaks(server: Host, client: Host, now: float) -> None:
    """The peer sends a byte: an acceptable segment reaches ``client`` at ``now``."""
    (peer_conn,) = server.connections.values()
    peer_conn.send(b"z")
    server.touch(peer_conn)
    pump(server, client, now)


def test_soft_error_is_not_named_once_the_peer_answered_again() -> None:
    host = make_host()
    conn, server = established(host)
    host.handle_kernel_error(icmp(conn, errno.EHOSTUNREACH, seq=conn.snd_una), 1.1)
    peer_speaks(server, host, 1.15)
    run_timers(host, conn, 1.15)
    (error,) = failed(conn)
    assert str(error) == "connection timed out (retransmission limit)"


def test_port_unreachable_answering_retransmissions_resets_the_connection() -> None:
    # The peer's process is gone: PORT_UNREACHABLE_COUNT errors or more, the first and the
    # last one RTO apart, nothing from the peer in between.
    host = make_host()
    conn, _server = established(host)
    rto = conn.rtt.current_rto()
    seq = conn.snd_una
    times = [1.1 + i * 0.01 for i in range(PORT_UNREACHABLE_COUNT + 2)]
    for t in times:  # a window's worth of errors within far less than one RTO
        host.handle_kernel_error(icmp(conn, errno.ECONNREFUSED, seq=seq), t)
    assert conn.state is State.ESTABLISHED and conn.error is None
    host.handle_kernel_error(icmp(conn, errno.ECONNREFUSED, seq=seq), 1.1 + rto)
    assert conn.state is State.CLOSED
    (error,) = failed(conn)
    assert isinstance(error, ConnectionResetError)
    assert "port unreachable" in str(error)


def test_port_unreachables_interrupted_by_the_peer_start_over() -> None:
    host = make_host()
    conn, server = established(host)
    rto = conn.rtt.current_rto()
    for t in (1.1, 1.11, 1.12):
        host.handle_kernel_error(icmp(conn, errno.ECONNREFUSED, seq=conn.snd_una), t)
    peer_speaks(server, host, 1.2)  # the peer is alive after all
    assert conn.state is State.ESTABLISHED
    for t in (1.3 + rto, 1.31 + rto):
        host.handle_kernel_error(icmp(conn, errno.ECONNREFUSED, seq=conn.snd_una), t)
    assert conn.state is State.ESTABLISHED and conn.error is None


def test_port_unreachable_drops_a_passive_half_open_connection_quietly() -> None:
    server = Host(CONFIG, address=PEER, isn_key=b"s" * 16)
    server.listen(PEER[1])
    client = make_host()
    client.connect(PEER, 0.0)
    pump(client, server, 0.0)
    (conn,) = server.connections.values()
    server.datagrams_to_send(0.0)  # our SYN-ACK
    assert conn.state is State.SYN_RECEIVED
    server.handle_kernel_error(icmp(conn, errno.ECONNREFUSED), 0.01)
    assert conn.state is State.CLOSED and conn.error is None
    assert not server.connections and PEER[1] in server.listeners


def test_emsgsize_is_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    host = make_host()
    conn, _server = established(host)
    err = icmp(conn, errno.EMSGSIZE, seq=conn.snd_una, origin=ORIGIN_LOCAL, icmp_type=0)
    with caplog.at_level(logging.WARNING, logger="utcp.core"):
        for t in (1.1, 1.2, 1.3):
            host.handle_kernel_error(err, t)
    assert conn.state is State.ESTABLISHED and conn.error is None
    assert conn.stats.emsgsize_errors == 3
    assert conn.soft_error == errno.EMSGSIZE  # a later timeout names it
    assert len([r for r in caplog.records if "EMSGSIZE" in r.message]) == 1
