import pytest

from .support import running_standin


@pytest.fixture(scope="session")
def standin(tmp_path_factory):
    """A real Kinetic stand-in server (subprocess) with the built-in seed."""
    state = tmp_path_factory.mktemp("standin-state")
    with running_standin(state) as s:
        yield s
