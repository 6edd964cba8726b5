"""Links with netem's impairments between two network namespaces (or a UDP proxy).

:mod:`bench.netem.spec` parses netem's own syntax, :mod:`bench.netem.emulator` applies it
with netem's semantics, :mod:`bench.netem.forwarder` is the process that moves packets
through the emulator, and :mod:`bench.netem.link` puts the pieces together. See README.md.
"""
