"""A small chat over utcp: msgpack messages with ``utcp.MessageStream``, relayed by a server.

Each client first sends ``{"join": NAME}``; after that every line it types becomes a message
``{"from": NAME, "text": LINE}`` that the server relays to every *other* connected client.
The server also tells everyone who joined or left: ``{"event": "join"|"leave", "name": ...,
"online": [names]}``. A client that cannot keep up (64 messages queued) is disconnected
rather than slowing everyone else down. Ctrl-D (end of stdin) leaves the chat.

On one machine (three terminals):

    .venv/bin/python examples/chat.py server --listen 127.0.0.1:4749
    .venv/bin/python examples/chat.py client 127.0.0.1 4749 --name alice
    .venv/bin/python examples/chat.py client 127.0.0.1 4749 --name bob

On two machines: ``server --listen 0.0.0.0:4749`` (or ``[::]:4749``) on the server, whose
firewall passes UDP 4749, and ``client SERVER 4749 --name NAME`` on each client machine.
``--listen 127.0.0.1:0`` picks a free port and logs it.

Non-interactive (scripts, tests): ``client HOST PORT --name alice --wait-peers 1 --send hi
--send bye --expect 2`` waits until one other client is online, sends its ``--send`` texts,
prints the first 2 messages from others and exits 0 (1 if ``--timeout`` passes first).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

import trio

import utcp

log = logging.getLogger("chat")

QUEUE = 64  # messages queued for one client before it is dropped as too slow
MAX_MESSAGE = 64 * 1024
CONNECT_TIMEOUT = 30.0


@dataclass
class Member:
    number: int
    name: str
    outbox: trio.MemorySendChannel[Any]
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)


class Room:
    """The connected clients; ``post`` queues a message for every member but the sender."""

    def __init__(self) -> None:
        self.members: dict[int, Member] = {}

    def online(self) -> list[str]:
        return [m.name for m in self.members.values()]

    def post(self, message: dict[str, Any], *, skip: int | None = None) -> None:
        for member in list(self.members.values()):
            if member.number == skip:
                continue
            try:
                member.outbox.send_nowait(message)
            except trio.WouldBlock:
                log.warning("#%d %s is too slow, disconnecting it", member.number, member.name)
                member.cancel.cancel()
            except trio.BrokenResourceError:
                pass  # it is leaving already


async def serve_client(room: Room, number: int, stream: utcp.UtcpStream) -> None:
    messages = utcp.MessageStream(stream, max_message_size=MAX_MESSAGE)
    outbox, inbox = trio.open_memory_channel[Any](QUEUE)
    member: Member | None = None
    try:
        async with messages, outbox, inbox:
            with trio.fail_after(CONNECT_TIMEOUT):
                hello = await messages.receive()
            if not isinstance(hello, dict) or not isinstance(hello.get("join"), str):
                log.warning("#%d did not say who it is: %r", number, hello)
                return
            member = Member(number, hello["join"][:64], outbox)
            room.members[number] = member
            log.info("#%d %s joined (%d online)", number, member.name, len(room.members))
            room.post({"event": "join", "name": member.name, "online": room.online()})

            async def deliver() -> None:
                async for message in inbox:
                    await messages.send(message)

            with member.cancel:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(deliver)
                    async for message in messages:
                        if isinstance(message, dict) and isinstance(message.get("text"), str):
                            text = {"from": member.name, "text": message["text"]}
                            room.post(text, skip=number)
                    nursery.cancel_scope.cancel()  # the client half-closed: it is leaving
    except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
        log.warning("#%d: %s", number, exc)
    finally:
        if member is not None:
            del room.members[number]
            log.info("#%d %s left (%d online)", number, member.name, len(room.members))
            room.post({"event": "leave", "name": member.name, "online": room.online()})


async def run_server(host: str | None, port: int) -> int:
    room = Room()
    counter = itertools.count(1)

    async def handler(stream: utcp.UtcpStream) -> None:
        await serve_client(room, next(counter), stream)

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            try:
                listeners = await nursery.start(
                    lambda task_status: utcp.serve_tcp(
                        handler, port, host=host, task_status=task_status
                    )
                )
            except OSError as exc:
                print(f"chat: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
                return 1
            for listener in listeners:
                ip, udp_port = listener.getsockname()
                log.info("chat server listening on %s:%d (UDP)", ip, udp_port)
            async for signum in signals:
                log.info("%s received, shutting down", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
    return 0


def show(message: Any) -> str | None:
    """A line for a chat message, or None for anything else."""
    if isinstance(message, dict) and "from" in message and "text" in message:
        return f"[{message['from']}] {message['text']}"
    return None


async def stdin_lines() -> Any:
    """Lines typed on stdin (a thread reads them, so the trio loop never blocks)."""
    while True:
        line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        if not line:
            return
        yield line.rstrip("\n")


async def run_client(args: argparse.Namespace) -> int:
    scripted = args.send or args.expect is not None or args.wait_peers
    with trio.fail_after(CONNECT_TIMEOUT):
        stream = await utcp.open_tcp_stream(args.host, args.port)
    messages = utcp.MessageStream(stream, max_message_size=MAX_MESSAGE)
    async with messages:
        await messages.send({"join": args.name})
        if not scripted:
            await chat_interactively(messages, args.name)
            return 0
        with trio.move_on_after(args.timeout) as scope:
            await chat_scripted(messages, args)
        if scope.cancelled_caught:
            print(f"chat: timed out after {args.timeout} s", file=sys.stderr)
            return 1
    return 0


async def chat_interactively(messages: utcp.MessageStream, name: str) -> None:
    async def type_lines() -> None:
        async for line in stdin_lines():
            if line:
                await messages.send({"from": name, "text": line})
        await messages.send_eof()  # Ctrl-D: the server sees us leave and closes

    async with trio.open_nursery() as nursery:
        nursery.start_soon(type_lines)
        async for message in messages:
            if (line := show(message)) is not None:
                print(line, flush=True)
            elif isinstance(message, dict) and "event" in message:
                online = ", ".join(message.get("online", []))
                print(f"* {message.get('name')} {message['event']}s; online: {online}", flush=True)
        nursery.cancel_scope.cancel()  # the server closed


async def chat_scripted(messages: utcp.MessageStream, args: argparse.Namespace) -> None:
    online: list[str] = []
    while len(online) < args.wait_peers + 1:  # ourselves plus the peers to wait for
        message = await messages.receive()
        if isinstance(message, dict) and "online" in message:
            online = list(message["online"])
    for text in args.send:
        await messages.send({"from": args.name, "text": text})
    seen = 0
    while seen < (args.expect or 0):
        if (line := show(await messages.receive())) is not None:
            print(line, flush=True)
            seen += 1
    # Leave cleanly: half-close, then read until the server closes, so it has had all we sent.
    await messages.send_eof()
    async for _ in messages:
        pass


def parse_listen(text: str) -> tuple[str | None, int]:
    """``[ADDR:]PORT`` (IPv6 in brackets), as ``utcp echo-server --listen`` takes it."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"expected [IPv6]:PORT, not {text!r}")
        return host, int(port)
    host, _, port = text.rpartition(":")
    return host or None, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    server = sub.add_parser("server", help="relay messages between clients")
    server.add_argument(
        "--listen", default="127.0.0.1:4749", metavar="[ADDR:]PORT", help="(default: %(default)s)"
    )
    client = sub.add_parser("client", help="chat: stdin lines out, messages in")
    client.add_argument("host", metavar="HOST")
    client.add_argument("port", metavar="PORT", type=int)
    client.add_argument("--name", required=True)
    client.add_argument("--send", action="append", default=[], metavar="TEXT", help="repeatable")
    client.add_argument("--expect", type=int, metavar="N", help="print N messages, then exit")
    client.add_argument(
        "--wait-peers", type=int, default=0, metavar="N", help="wait for N others before --send"
    )
    client.add_argument("--timeout", type=float, default=30.0, help="for the scripted mode")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        if args.role == "server":
            try:
                host, port = parse_listen(args.listen)
            except ValueError as exc:
                parser.error(str(exc))
            return trio.run(run_server, host or "0.0.0.0", port)
        args.host = args.host.strip("[]")
        return trio.run(run_client, args)
    except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
        print(f"chat: {exc!r}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
