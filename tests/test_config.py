"""The hub configuration: a missing production setting stops the hub with its name, never half-runs."""

import json
import subprocess
import sys
from pathlib import Path

from .support import ROOT, child_env

JUPYTERHUB = str(Path(sys.executable).parent / "jupyterhub")
CONFIG = str(ROOT / "hub_config" / "jupyterhub_config.py")


def show_config(tmp_path, **env):
    return subprocess.run(
        [JUPYTERHUB, "-f", CONFIG, "--show-config"],
        capture_output=True,
        text=True,
        env=child_env(KINETIC_STATE_DIR=tmp_path, **env),
        cwd=tmp_path,
        timeout=60,
    )


def test_aws_profile_names_each_missing_setting(tmp_path):
    r = show_config(tmp_path, KINETIC_PROFILE="aws")
    assert r.returncode != 0 and "set the environment variable KINETIC_PUBLIC_HUB_URL" in r.stderr + r.stdout
    r = show_config(tmp_path, KINETIC_PROFILE="aws", KINETIC_PUBLIC_HUB_URL="https://ws.example")
    assert (
        r.returncode != 0
        and "set the environment variable KINETIC_SSO_PUBLIC_KEY_FILE" in r.stderr + r.stdout
    )


def test_a_public_hub_url_without_a_host_name_is_refused_in_words(tmp_path):
    """Workspaces are served from subdomains of the hub's host name: an IP address cannot have any."""
    r = show_config(tmp_path, KINETIC_PUBLIC_HUB_URL="http://127.0.0.1:8000")
    assert r.returncode != 0 and "is an IP address" in r.stderr + r.stdout


def test_unknown_profile_is_refused(tmp_path):
    r = show_config(tmp_path, KINETIC_PROFILE="staging")
    assert r.returncode != 0 and "must be 'local' or 'aws'" in r.stderr + r.stdout


def test_aws_profile_with_its_settings_selects_the_aws_world(tmp_path):
    keys = tmp_path / "k"
    keys.mkdir()
    (keys / "pub.pem").write_text("x")
    (keys / "enc").write_text("x")
    r = show_config(
        tmp_path,
        KINETIC_PROFILE="aws",
        KINETIC_SSO_PUBLIC_KEY_FILE=keys / "pub.pem",
        KINETIC_SSO_ENCRYPTION_KEY_FILE=keys / "enc",
        KINETIC_ADMIN_UUIDS="u1,u2",
        KINETIC_DB_URL=f"sqlite:///{tmp_path}/hub.sqlite",
        KINETIC_PUBLIC_HUB_URL="https://ws.example",
        KINETIC_REVIEWER_UUIDS="r1,r2",
        KINETIC_SMTP_HOST="smtp.example",
        KINETIC_ENCLAVE_KEY_FILE=keys / "enc",
        KINETIC_ENCLAVE_DB_URL="postgresql://e@db/e",
        KINETIC_URL="https://kinetic.example",
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-2000:]
    assert "'aws'" in out and "hub.sqlite" in out and "enclave_service_config.json" in out
    enclave = json.loads(next(tmp_path.rglob("enclave_service_config.json")).read_text())
    assert "ec2" in json.dumps(enclave)  # the enclave runs on EC2 in the aws world
