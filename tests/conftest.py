import json

import pytest

from kinetic_auth.standin.seed import KATHERINE, default_seed

from .hub import INSTANCES, remove_containers, running_hub
from .image_fixtures import workspace_image_fixture  # noqa: F401  (the `workspace_image` fixture)
from .support import postgres_bin, resolve_local_names, running_postgres, running_standin

resolve_local_names()  # workspaces are at analysis-<id>.localhost, as browsers resolve it

# An analysis whose text is hostile HTML: every page that shows Kinetic's data must escape it.
HOSTILE_ANALYSIS = {
    "id": 105,
    "title": '<img src=x onerror="window.__pwned=1">Hostile & "title"',
    "description": "<script>window.__pwned=2</script>",
    "researchers": [KATHERINE],
    "study_ids": [15],
}


@pytest.fixture(scope="session")
def standin(tmp_path_factory, workspace_image):
    """A real Kinetic stand-in server (subprocess): the built-in seed plus one hostile analysis.

    Every hub the tests start opens workspaces from it, so the workspace image is built (once,
    first) before any hub needs it."""
    state = tmp_path_factory.mktemp("standin-state")
    seed = default_seed()
    seed["analyses"] = [*seed["analyses"], HOSTILE_ANALYSIS]
    seed_file = state / "seed.json"
    seed_file.write_text(json.dumps(seed))
    with running_standin(state, seed_file) as s:
        yield s


@pytest.fixture(scope="session")
def hub(tmp_path_factory, standin):
    """A real JupyterHub + proxy from hub_config/jupyterhub_config.py, shared by the tests that
    don't need a hub of their own. The stand-in's keys are the hub's keys (same state dir)."""
    state = standin.state_dir
    with running_hub(state, standin, env_overrides={"TEST_AUTH_REFRESH_AGE": "1"}) as h:
        yield h


@pytest.fixture(scope="session", autouse=True)
def no_workspace_left_behind():
    """Hubs stop their workspaces on the way out; a test that failed halfway may not have."""
    yield
    for instance in sorted(INSTANCES):
        remove_containers(instance)


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL server for the session (Debian's packages, a temporary data
    directory, a free port, password auth over TCP; ~2 s to start), a factory of databases:
    ``postgres.database("hub")`` returns a fresh database's SQLAlchemy URL."""
    if postgres_bin() is None:
        pytest.fail("PostgreSQL is not installed: `make deps` installs Debian's postgresql package")
    with running_postgres() as pg:
        yield pg
