"""Structure the review asked for: RFC 9293's transition table enforced by ``_set_state``."""

from __future__ import annotations

import pytest
from _factories import FACTORIES, established, real_exchange

from utcp._errors import UtcpInternalError
from utcp._state import TRANSITIONS, State


def test_illegal_state_change_raises_an_internal_error() -> None:
    # RFC 9293 3.3.2 figure 5 has no ESTABLISHED -> SYN-SENT edge.
    conn = established()
    with pytest.raises(UtcpInternalError):
        conn._set_state(State.SYN_SENT)
    assert conn.state is State.ESTABLISHED


def test_every_state_can_be_aborted_to_closed() -> None:
    assert all((s, State.CLOSED) in TRANSITIONS for s in State if s is not State.CLOSED)
    assert not any(old is new for old, new in TRANSITIONS)


@pytest.mark.parametrize("state", list(FACTORIES), ids=str)
def test_real_exchanges_only_take_edges_of_the_table(state: State) -> None:
    # _set_state raises on any other edge, so reaching every state proves the paths legal
    # (test_fuzz.py does the same for every transition its random segments reach).
    local, peer = real_exchange(state)
    assert local.state is state
    for conn in (local, peer):
        conn.abort(9.0)
        assert conn.state is State.CLOSED
