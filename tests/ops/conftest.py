"""Fixtures for running the kit as an operator would: a real PostgreSQL server.

``postgres`` is one throwaway PostgreSQL for the whole session (Debian's packages, a temporary data
directory, a free port, password auth over TCP; ~2 s to start). It is a factory of databases:
``postgres.database("hub")`` returns a fresh database's SQLAlchemy URL, so the hub and — once the
enclave runs on PostgreSQL — the enclave (``postgres.database("enclave")``) each get their own.
To use it outside ``tests/ops``, import it in ``tests/conftest.py``:
``from .ops.conftest import postgres  # noqa: F401``.
"""

import pytest

from ..support import postgres_bin, running_postgres


@pytest.fixture(scope="session")
def postgres():
    if postgres_bin() is None:
        pytest.fail("PostgreSQL is not installed: `make deps` installs Debian's postgresql package")
    with running_postgres() as pg:
        yield pg
