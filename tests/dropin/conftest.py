from __future__ import annotations

import pytest
import trio.testing
from _dropin import Tls


@pytest.fixture(scope="session")
def tls() -> Tls:
    return Tls()


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)
