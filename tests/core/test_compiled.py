"""The opt-in compiled core (pyproject's mypyc build hook) behaves exactly as pure Python.

``HATCH_BUILD_HOOK_ENABLE_MYPYC=true pip install .`` compiles the sans-IO core with mypyc.
The proof that it changes nothing: a set of transfers over the seeded simulated network
(clean, lossy, reordering and bottleneck links, SACK on and off, Nagle on and off) run once
with the pure-Python core in this process and once with the compiled wheel in a child
process; every datagram on the wire (virtual time, addresses, bytes) and the bytes each end
received must be identical.

The build takes a few minutes, so the test is ``slow`` (``tox -e nightly``, ``tox -e
mypyc``). Run as a script, this file prints the digests of whichever ``utcp`` it imports.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import build_compiled
from utcp.testing import GilbertElliott, HostPair, LinkConfig, random_payload

COMPILED_MODULES = (
    "_connection",
    "_host",
    "_fastpath",
    "_output",
    "_timers",
    "_loss_recovery",
    "_wire",
    "_buffers",
)

# Modules of the sans-IO core that the mypyc hook leaves in pure Python, and why. Any other
# module the core imports must be in pyproject's include list (a module split off the hot
# path and forgotten there runs interpreted between compiled ones: _output and _timers did).
NOT_COMPILED = {
    "_config": "Config checks its fields' types at run time from their annotations, which "
    "a compiled dataclass does not keep",
    "_events": "mypyc fails to build the dataclass whose field is annotated Exception",
    "_errors": "exception classes users catch and subclass",
    "_stats": "counters read by users; compiled, the echo core measured no faster",
    "_kernel_errors": "runs only when the kernel reports an ICMP error",
}

LINKS = {
    "clean": LinkConfig(delay=0.01),
    "lossy": LinkConfig(delay=0.02, loss=0.03),
    "reordering": LinkConfig(delay=0.01, jitter=0.002, reorder=0.05, duplicate=0.01),
    "bottleneck": LinkConfig(delay=0.02, rate=2e6, queue_bytes=30_000),
    "burst-loss": LinkConfig(delay=0.015, burst_loss=GilbertElliott(0.01, 0.3)),
}


def wire_digests() -> dict[str, str]:
    """For each scenario, a hash of every datagram sent on the simulated wire and of the
    bytes each end received."""
    from utcp import Config

    out: dict[str, str] = {}
    for name, link in sorted(LINKS.items()):
        for seed in (1, 2):
            for sack in (True, False):
                for nodelay in (True, False):
                    config = Config(sack=sack, nodelay=nodelay)
                    pair = HostPair(seed=seed, link=link, config=config, trace=True)
                    result = pair.transfer(
                        random_payload(seed, 120_000), random_payload(seed + 1, 30_000)
                    )
                    h = hashlib.sha256()
                    for r in pair.net.trace_records:
                        if r.fate == "sent":
                            h.update(repr((r.time, r.src, r.dst)).encode())
                            h.update(bytes(r.data))
                    h.update(result.client.digest_received().encode())
                    h.update(result.server.digest_received().encode())
                    key = f"{name}/seed{seed}/sack={sack}/nodelay={nodelay}"
                    if not result.intact:
                        raise AssertionError(f"{key}: the bytes did not arrive intact")
                    out[key] = h.hexdigest()
    return out


def socket_transfer() -> dict[str, str]:
    """1 MB out and back over utcp on 127.0.0.1 through the public API (the trio layer on
    top of whichever core is imported), on two connections at once; SHA-256 of what each
    client sent and of what came back."""
    import trio

    import utcp

    async def echo(stream: utcp.UtcpStream) -> None:
        async with stream:
            while data := await stream.receive_some():
                await stream.send_all(data)

    async def client(port: int, seed: int, out: dict[str, str]) -> None:
        payload = random_payload(seed, 1_000_000)
        back = bytearray()
        async with await utcp.open_tcp_stream("127.0.0.1", port) as stream:

            async def sender() -> None:
                for i in range(0, len(payload), 50_000):
                    await stream.send_all(payload[i : i + 50_000])
                await stream.send_eof()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                while data := await stream.receive_some():
                    back += data
        out[f"sent{seed}"] = hashlib.sha256(payload).hexdigest()
        out[f"back{seed}"] = hashlib.sha256(back).hexdigest()

    async def main() -> dict[str, str]:
        out: dict[str, str] = {}
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                listeners = await nursery.start(utcp.serve_tcp, echo, 0)
                port = listeners[0].getsockname()[1]
                async with trio.open_nursery() as clients:
                    clients.start_soon(client, port, 1, out)
                    clients.start_soon(client, port, 2, out)
                nursery.cancel_scope.cancel()
        return out

    return trio.run(main)


def _compiled_modules() -> list[str]:
    import importlib

    files = [importlib.import_module(f"utcp.{m}").__file__ or "" for m in COMPILED_MODULES]
    return [f for f in files if not f.endswith(".py")]


def _core_modules() -> set[str]:
    """Every utcp module the sans-IO host imports, directly or not (relative imports)."""
    package = build_compiled.ROOT / "utcp"

    def path_of(module: str) -> Path:
        path = package.joinpath(*module.split(".")).with_suffix(".py")
        return path if path.exists() else package.joinpath(*module.split("."), "__init__.py")

    seen: set[str] = set()
    todo = ["_host"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = path_of(module)
        base = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                todo += [f"{base}.{name}".strip(".") for name in names]
    return seen


def test_the_mypyc_build_compiles_every_core_module_but_the_listed_ones() -> None:
    # pyproject's [tool.hatch.build.targets.wheel.hooks.mypyc] include list (read with a
    # pattern: tomllib is Python 3.11+).
    text = (build_compiled.ROOT / "pyproject.toml").read_text()
    section = text.split("[tool.hatch.build.targets.wheel.hooks.mypyc]", 1)[1]
    match = re.search(r"^include = \[(.*?)^\]", section, re.MULTILINE | re.DOTALL)
    assert match is not None
    include = re.findall(r'"([^"]+)"', match.group(1))
    compiled = {
        entry.removeprefix("utcp/").removesuffix(".py").replace("/", ".") for entry in include
    }
    covered = {m for m in _core_modules() if m.split(".")[0] in compiled}
    assert _core_modules() - covered == set(NOT_COMPILED)
    assert "_output" in compiled and "_congestion" in compiled  # the walk found something


def test_the_scenarios_deliver_every_byte_intact_on_distinct_wires() -> None:
    # The comparison below is only as good as its scenarios: each delivers its bytes intact
    # (wire_digests raises otherwise) and each puts a different sequence on the wire.
    assert not _compiled_modules()
    digests = wire_digests()
    assert len(digests) == 40
    assert len(set(digests.values())) == 40


@pytest.mark.slow
def test_mypyc_build_puts_the_same_segments_on_the_wire(tmp_path: Path) -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler for mypyc")
    site = build_compiled.build(tmp_path / "site")  # from a copy: this tree stays pure
    child = subprocess.run(
        [sys.executable, __file__],
        env=dict(os.environ, PYTHONPATH=os.pathsep.join((str(site), str(build_compiled.ROOT)))),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)
    assert len(report["compiled"]) == len(COMPILED_MODULES), report["compiled"]
    assert not _compiled_modules()  # this process runs the pure-Python core
    assert report["digests"] == wire_digests()
    socket = report["socket"]
    assert socket["back1"] == socket["sent1"] and socket["back2"] == socket["sent2"]
    assert socket["sent1"] != socket["sent2"]


if __name__ == "__main__":
    report = {"compiled": _compiled_modules(), "digests": wire_digests()}
    report["socket"] = socket_transfer()
    print(json.dumps(report))
