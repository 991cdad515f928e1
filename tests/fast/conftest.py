"""Fixtures shared by the fast (in-process) tests."""

import socket

import pytest


@pytest.fixture
def silent_kinetic():
    """An address that accepts connections and never answers: Kinetic hanging."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
