"""Join the enclave service to a JupyterHub config.

    from enclave_service.hub_integration import configure_enclave_service
    configure_enclave_service(c, state_dir="state/enclave", kinetic_url="http://127.0.0.1:8900",
                              public_url="http://127.0.0.1:8000", reviewers=[ROSALIND, MARIE],
                              smtp_port=8025, enclave_key_file="state/keys/kinetic_enclave_key")

This registers a hub-managed service ``enclave`` (the hub starts it, restarts it when it exits and
gives it its API token and OAuth client), a role that lets the service read users, groups and
auth_state (to call Kinetic as the researcher and to mail them), the ``reviewers`` group, and the
``access:services!service=enclave`` scope for every user (pages and API).

``add_metrics_reader(c, name, api_token)`` adds a token-only service whose token reads the hub's
``/hub/metrics`` and the enclave's ``/services/enclave/metrics`` (the scope ``read:metrics``): the
token a Prometheus server scrapes with.

Configuration takes one path: the keywords (and ``risk_appetite`` / ``config`` for everything
else, the EC2 runner's settings included) are written as the service's traitlets config file,
``<state_dir>/enclave_service_config.json``, which the service loads (``--config=FILE``). No
setting travels through the environment.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

SERVICE_NAME = "enclave"
SERVICE_SCOPES = ["list:users", "read:users", "admin:auth_state", "read:groups"]


def _append_role(c, role: dict) -> None:
    roles = list(c.JupyterHub.load_roles) if "load_roles" in c.JupyterHub else []
    roles = [r for r in roles if r.get("name") != role["name"]]
    roles.append(role)
    c.JupyterHub.load_roles = roles


def _grant_user_access(c, scope: str) -> None:
    roles = list(c.JupyterHub.load_roles) if "load_roles" in c.JupyterHub else []
    for r in roles:
        if r.get("name") == "user":
            if scope not in r.setdefault("scopes", ["self"]):
                r["scopes"].append(scope)
            break
    else:
        roles.append({"name": "user", "description": "Standard user privileges", "scopes": ["self", scope]})
    c.JupyterHub.load_roles = roles


def configure_enclave_service(
    c,
    *,
    state_dir,
    kinetic_url: str,
    public_url: str,
    reviewers: list[str],
    smtp_port: int,
    smtp_host: str = "127.0.0.1",
    mail_from: str = "Kinetic enclave <enclave@kinetic.invalid>",
    enclave_key_file: str | None = None,
    port: int = 10101,
    runner: str = "podman",
    required_approvals: int = 2,
    workspaces_root: str | None = None,
    db_url: str | None = None,
    reviewers_group: str = "reviewers",
    kinetic_cookie_name: str = "oxa",
    run_wall_seconds: int | None = None,
    step_limits: dict | None = None,
    show_run_logs_to_researchers: bool = False,
    risk_appetite: dict | None = None,
    config: dict | None = None,
    mail_sink_dir: str | None = None,
    extra_env: dict | None = None,
) -> dict:
    """Register the enclave service on JupyterHub config ``c``; returns the service entry.

    ``reviewers``: hub user names (researcher uuids) of the output reviewers group.
    ``enclave_key_file``: file with Kinetic's enclave key; only this service reads it (the key is
    never put in the environment, the command line or a run). Without it, Kinetic sync and
    real-data staging are off.
    ``workspaces_root``: local backend only — the folder of workspace homes, ``<root>/<analysis id>``,
    which lets the service snapshot a workspace itself (page submit, JSON submit).
    ``risk_appetite``: overrides of ``enclave_service/risk_appetite.yaml`` (thresholds, limits, rule
    levels), e.g. ``{"outputs": {"min_cell_count": 20}}``.
    ``config``: any other traitlets settings of the service, by class, e.g.
    ``{"EC2Runner": {"subnet_id": "subnet-…"}, "EnclaveService": {"retention_days": 60}}``.
    ``mail_sink_dir``: demo only — also run a hub-managed SMTP sink (service ``mailsink``) on
    ``smtp_host:smtp_port`` that writes every mail to this folder as ``.eml`` files.
    """
    state_dir = Path(state_dir).resolve()
    appetite = json.loads(json.dumps(risk_appetite or {}))
    if run_wall_seconds is not None:
        appetite.setdefault("run", {})["wall_seconds"] = int(run_wall_seconds)
    settings = {
        "state_dir": str(state_dir),
        "kinetic_url": kinetic_url,
        "kinetic_cookie_name": kinetic_cookie_name,
        "public_url": public_url.rstrip("/"),
        "smtp_host": smtp_host,
        "smtp_port": int(smtp_port or 0),
        "mail_from": mail_from,
        "reviewers_group": reviewers_group,
        "required_approvals": int(required_approvals),
        "runner": runner,
        "step_limits": dict(step_limits or {}),
        "show_run_logs_to_researchers": bool(show_run_logs_to_researchers),
        "risk_appetite": appetite,
    }
    if enclave_key_file:
        settings["enclave_key_file"] = str(Path(enclave_key_file).resolve())
    if workspaces_root:
        settings["workspaces_root"] = str(Path(workspaces_root).resolve())
    if db_url:
        settings["db_url"] = db_url
    service_config = {k: dict(v) for k, v in (config or {}).items()}
    service_config["EnclaveService"] = {**settings, **service_config.get("EnclaveService", {})}
    state_dir.mkdir(parents=True, exist_ok=True)
    config_file = state_dir / "enclave_service_config.json"
    tmp = config_file.with_suffix(".partial")
    tmp.write_text(json.dumps(service_config, indent=2, sort_keys=True))
    os.chmod(tmp, 0o600)
    os.replace(tmp, config_file)

    # The hub starts the service in its own working directory: make this package importable
    # whether it is installed or run from a checkout.
    here = str(Path(__file__).resolve().parent.parent)
    env = {"PYTHONPATH": os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH", "")) if p)}
    env.update({k: str(v) for k, v in (extra_env or {}).items()})

    service = {
        "name": SERVICE_NAME,
        "url": f"http://127.0.0.1:{port}",
        "command": [sys.executable, "-m", "enclave_service.app", f"--config={config_file}"],
        "environment": env,
        "oauth_no_confirm": True,
        "display": True,
        "info": {"description": "Submit analyses to the enclave; review and release outputs"},
    }
    services = list(c.JupyterHub.services) if "services" in c.JupyterHub else []
    services = [s for s in services if s.get("name") != SERVICE_NAME]
    services.append(service)
    c.JupyterHub.services = services

    if mail_sink_dir:
        services = [s for s in c.JupyterHub.services if s.get("name") != "mailsink"]
        services.append(
            {
                "name": "mailsink",
                "environment": {"PYTHONPATH": env["PYTHONPATH"]},
                "command": [
                    sys.executable,
                    "-m",
                    "enclave_service.mailsink",
                    "--host",
                    smtp_host,
                    "--port",
                    str(smtp_port),
                    "--dir",
                    str(Path(mail_sink_dir).resolve()),
                ],
            }
        )
        c.JupyterHub.services = services

    _append_role(
        c,
        {
            "name": "enclave-service",
            "description": "What the enclave service may read from the hub",
            "scopes": list(SERVICE_SCOPES),
            "services": [SERVICE_NAME],
        },
    )
    _grant_user_access(c, f"access:services!service={SERVICE_NAME}")

    groups = dict(c.JupyterHub.load_groups) if "load_groups" in c.JupyterHub else {}
    entry = groups.get(reviewers_group, {})
    members = entry.get("users", []) if isinstance(entry, dict) else list(entry)
    groups[reviewers_group] = {
        "users": sorted(set(members) | set(reviewers)),
        "properties": {"purpose": "enclave output review"},
    }
    c.JupyterHub.load_groups = groups
    return service


METRICS_READER_SCOPES = ["read:metrics", f"access:services!service={SERVICE_NAME}"]


def add_metrics_reader(c, name: str = "metrics-reader", api_token: str = "") -> dict:
    """Register a token-only hub service (no process, no URL) for a Prometheus server: its
    ``api_token`` has ``read:metrics`` (JupyterHub's scope for ``/hub/metrics``, which the enclave
    asks for too) and access to the enclave service, and nothing else. Returns the service entry.
    Keep the token in a secret store and give the same value to Prometheus (``authorization``)."""
    if len(api_token) < 8:
        raise ValueError("add_metrics_reader: give api_token a long random value (e.g. openssl rand -hex 32)")
    services = list(c.JupyterHub.services) if "services" in c.JupyterHub else []
    services = [s for s in services if s.get("name") != name]
    service = {"name": name, "api_token": api_token}
    services.append(service)
    c.JupyterHub.services = services
    _append_role(
        c,
        {
            "name": f"{name}-scrape",
            "description": "Read the hub's and the enclave's metrics",
            "scopes": list(METRICS_READER_SCOPES),
            "services": [name],
        },
    )
    return service
