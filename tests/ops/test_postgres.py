"""The hub on PostgreSQL (the database a production JupyterHub uses; RDS on AWS), for real: a
throwaway PostgreSQL server, the real hub from hub_config/jupyterhub_config.py pointed at it by
``KINETIC_DB_URL``, a researcher opening an analysis, and a hub restart that finds the workspace
again in the database."""

import json

from kinetic_auth.standin.seed import ADA

from ..hub import owner, running_hub


def test_the_hub_runs_on_postgresql_and_a_restart_keeps_the_workspace(postgres, standin, tmp_path):
    url = postgres.database("hub_restart")
    with running_hub(tmp_path, standin, env_overrides={"KINETIC_DB_URL": url}) as hub:
        ada = hub.browser_session(ADA)
        page = hub.open_analysis(ada, 102)
        assert page.status_code == 200 and "RStudio" in page.text, page.text[:500]

        # the hub's records are in PostgreSQL (and no SQLite file was made beside them)
        assert not (tmp_path / "jupyterhub.sqlite").exists()
        names = {n for (n,) in postgres.query("hub_restart", "SELECT name FROM users")}
        assert {ADA, owner(102)} <= names  # the researcher, and the analysis that owns the workspace
        [(saved,)] = postgres.query(
            "hub_restart",
            "SELECT s.state FROM spawners s JOIN users u "
            "ON s.user_id = u.id WHERE u.name = %s AND s.name = 'a-102'",
            owner(102),
        )
        state = json.loads(saved)  # JupyterHub keeps spawner state as JSON text
        assert state["backend"] == "container" and state["analysis_id"] == "102", state
        [(version,)] = postgres.query("hub_restart", "SELECT version_num FROM alembic_version")
        assert version  # JupyterHub's schema, stamped: `jupyterhub upgrade-db` can take it from here

        url_before = hub.servers(owner(102))["a-102"]["url"]
        hub.stop()
        hub.start()
        servers = hub.servers(owner(102))
        assert servers.get("a-102", {}).get("ready") and servers["a-102"]["url"] == url_before, servers
        again = ada.get(page.url)
        assert again.status_code == 200 and "RStudio" in again.text
        hub.stop_workspace(owner(102), "a-102")
