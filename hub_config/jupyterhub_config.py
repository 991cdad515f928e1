"""JupyterHub configuration for Kinetic Workspaces.

Two profiles, chosen by KINETIC_PROFILE:

* ``local`` (default, embedded defaults): everything on this machine — SQLite and keys under the
  state dir, the Kinetic stand-in, workspaces as podman containers of the workspace image, a local
  mail sink. Nothing external.
* ``aws`` (production skeleton): the real Kinetic, EC2 workspaces, a database URL. Every value it
  needs comes from the environment and is listed in the README; a missing one stops the hub at start
  with its name, rather than running half-configured.

Every knob the local profile reads from the environment has a default, so `make demo` and the
tests start this same file with nothing set.
"""

import os
import secrets
import sys
from pathlib import Path

c = get_config()  # noqa: F821 (provided by JupyterHub)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # so `kinetic_auth` etc. import even without `pip install -e`

from kinetic_auth import origins  # noqa: E402
from kinetic_auth.keys import ensure_standin_keys  # noqa: E402
from kinetic_auth.standin import seed  # noqa: E402

PROFILE = os.environ.get("KINETIC_PROFILE", "local")
if PROFILE not in ("local", "aws"):
    raise SystemExit(f"KINETIC_PROFILE must be 'local' or 'aws', not {PROFILE!r}")
STATE = Path(os.environ.get("KINETIC_STATE_DIR", ROOT / "state")).resolve()
STATE.mkdir(parents=True, exist_ok=True, mode=0o700)


def env(name, default=None):
    value = os.environ.get(name, default)
    if value is None:
        raise SystemExit(f"Kinetic Workspaces ({PROFILE} profile): set the environment variable {name}")
    return value


def secret_file(name: str, make) -> Path:
    path = STATE / "keys" / name
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(make())
    return path


# -- the front desk ----------------------------------------------------------------------------
HUB_IP = env("KINETIC_HUB_IP", "127.0.0.1")
HUB_PORT = int(env("KINETIC_HUB_PORT", "8000"))
c.JupyterHub.bind_url = f"http://{HUB_IP}:{HUB_PORT}"
# Where browsers reach the hub. Each analysis's workspace is served from its own subdomain of this
# host (analysis-101.localhost:8000 locally), never from the hub's origin: kinetic_auth/origins.py.
try:
    PUBLIC_HUB_URL = origins.check_public_url(
        env("KINETIC_PUBLIC_HUB_URL", f"http://localhost:{HUB_PORT}" if PROFILE == "local" else None)
    )
except ValueError as e:
    raise SystemExit(f"Kinetic Workspaces ({PROFILE} profile): KINETIC_PUBLIC_HUB_URL: {e}") from None
c.JupyterHub.subdomain_host = PUBLIC_HUB_URL
c.JupyterHub.subdomain_hook = origins.subdomain_hook
HUB_API_PORT = int(env("KINETIC_HUB_API_PORT", "8081"))
WORKSPACE_BACKEND = env("KINETIC_WORKSPACE_BACKEND", "container" if PROFILE == "local" else "aws")
# The process backend refuses to run workspaces as root unless this says so (developing the kit only).
c.ProcessBackend.run_as_root = env("KINETIC_PROCESS_BACKEND_AS_ROOT", "0") == "1"
if WORKSPACE_BACKEND == "container":
    # Workspace containers reach the hub API through their network's gateway, so the API listens
    # beyond loopback; the workspaces' firewall lets them reach this port and no other of the hub's
    # (kinetic_spawner/backends/container_network.py). The proxy and services use loopback.
    c.JupyterHub.hub_bind_url = f"http://0.0.0.0:{HUB_API_PORT}"
    c.JupyterHub.hub_connect_url = f"http://127.0.0.1:{HUB_API_PORT}"
else:
    c.JupyterHub.hub_bind_url = f"http://127.0.0.1:{HUB_API_PORT}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{env('KINETIC_PROXY_API_PORT', '8001')}"
c.ConfigurableHTTPProxy.pid_file = str(STATE / "jupyterhub-proxy.pid")
c.JupyterHub.cookie_secret_file = str(secret_file("jupyterhub_cookie_secret", lambda: secrets.token_hex(32)))
c.JupyterHub.db_url = env("KINETIC_DB_URL", f"sqlite:///{STATE / 'jupyterhub.sqlite'}")
# auth_state (it holds the researcher's Kinetic cookie) is encrypted at rest with this key.
os.environ.setdefault(
    "JUPYTERHUB_CRYPT_KEY", secret_file("crypt_key", lambda: secrets.token_hex(32)).read_text()
)
c.JupyterHub.template_paths = [str(ROOT / "kinetic_auth" / "templates")]
c.JupyterHub.default_url = "/hub/home"  # researchers land on their analyses, never a spawn form
c.JupyterHub.allow_named_servers = True
c.JupyterHub.named_server_limit_per_user = 0  # one per analysis; the analysis list is the real limit
# Workspaces outlive the hub: a hub restart or upgrade must not stop researchers' sessions.
# (`make demo` sets KINETIC_STOP_WORKSPACES_ON_EXIT=1 so Ctrl-C leaves nothing running.)
c.JupyterHub.cleanup_servers = env("KINETIC_STOP_WORKSPACES_ON_EXIT", "0") == "1"
c.JupyterHub.tornado_settings = {
    # /hub/analysis/<id> shows its own progress page at once instead of blocking up to 10 s.
    "slow_spawn_timeout": 0,
    # The hub's cookies (login, session id, XSRF; JupyterHub applies cookie_options to each) are not
    # sent with requests other sites start, bar top-level links: Lax, because signing in arrives
    # from Kinetic by a top-level redirect. (Secure follows the public URL's scheme: https in
    # production, none for the demo's http.)
    "cookie_options": {"samesite": "Lax"},
    # JupyterHub's own Content-Security-Policy (frame-ancestors 'none'; kept: no
    # Content-Security-Policy here) on every hub page; this for browsers without CSP level 2.
    "headers": {"X-Frame-Options": "DENY"},
}

# -- who: Kinetic sign-in ------------------------------------------------------------------------
c.JupyterHub.authenticator_class = "kinetic"
KINETIC_URL = env("KINETIC_URL", "http://127.0.0.1:8900")
c.KineticAuthenticator.kinetic_url = KINETIC_URL
# Where browsers reach Kinetic. Its sign-in cookie must reach the hub's host (and no workspace's):
# locally the stand-in is on the hub's host name (localhost), another port, a host-only cookie.
c.KineticAuthenticator.kinetic_public_url = env(
    "KINETIC_PUBLIC_URL",
    origins.on_host(KINETIC_URL, PUBLIC_HUB_URL) if PROFILE == "local" else KINETIC_URL,
)
c.KineticAuthenticator.sso_cookie_name = env("KINETIC_COOKIE_NAME", "oxa")

# Researchers may not start servers through the REST API or JupyterHub's spawn pages: the only way
# in is /hub/analysis/<id>, which asks Kinetic first. (pre_spawn_start checks again for any path.)
# Nor may they share a workspace themselves: joining goes through Kinetic's list of researchers.
# `users:activity!user`: a workspace reports its own activity with its server token (whose scopes
# never exceed its owner's), so the idle culler sees a busy workspace as busy.
USER_SCOPES = [
    "read:users!user",
    "read:users:name!user",
    "read:users:groups!user",
    "read:users:activity!user",
    "users:activity!user",
    "read:users:shares!user",
    "read:servers!user",
    "delete:servers!user",
    "access:servers!user",
    "tokens!user",
    "read:tokens!user",
]
IDLE_TIMEOUT = int(env("KINETIC_IDLE_TIMEOUT", "1800"))  # 30 minutes, as the original
IDLE_EVERY = int(env("KINETIC_IDLE_CHECK_EVERY", str(max(1, min(300, IDLE_TIMEOUT // 5)))))
# The hub's own pages (/hub/analysis/<id>, /hub/home) find, start, name and share workspaces through
# JupyterHub's public REST API as this service. Its token is made afresh at each start and lives only
# in the hub's memory (no file, no environment variable).
HUB_PAGES_TOKEN = secrets.token_hex(32)
c.KineticAuthenticator.hub_api_token = HUB_PAGES_TOKEN
# Access follows Kinetic: every running workspace's people re-asked of Kinetic this often (seconds);
# kinetic_auth/access_review.py says what happens on each answer and the bound it gives.
c.AccessReview.interval = float(env("KINETIC_ACCESS_REVIEW_SECONDS", "15"))
c.AccessReview.unreachable_grace = float(env("KINETIC_ACCESS_UNREACHABLE_GRACE", "30"))
c.JupyterHub.load_roles = [
    {"name": "user", "scopes": USER_SCOPES},
    {
        "name": "idle-culler",
        "services": ["idle-culler"],
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
    },
    {
        "name": "kinetic-hub-pages",
        "services": ["kinetic-hub-pages"],
        # + the access review (kinetic_auth/access_review.py): each person's Kinetic sign-in to ask
        # Kinetic as them, their sign-ins to revoke, a workspace to stop when its owner is removed;
        # admin:users: the hub user that owns an analysis's workspaces is made on its first opening
        "scopes": [
            "admin:users",
            "list:users",
            "read:servers",
            "start:servers",
            "delete:servers",
            "shares",
            "read:users:name",
            "admin:auth_state",
            "tokens",
        ],
    },
]
c.JupyterHub.services = [
    {"name": "kinetic-hub-pages", "api_token": HUB_PAGES_TOKEN},
    {
        "name": "idle-culler",
        "command": [
            sys.executable,
            "-m",
            "jupyterhub_idle_culler",
            f"--timeout={IDLE_TIMEOUT}",
            f"--cull-every={IDLE_EVERY}",
            "--remove-named-servers=false",
        ],
    },
]

# -- where: workspaces ------------------------------------------------------------------------------
c.JupyterHub.spawner_class = "kinetic-workspace"
c.WorkspaceSpawner.kinetic_url = KINETIC_URL
c.WorkspaceSpawner.backend = WORKSPACE_BACKEND
c.Spawner.http_timeout = int(env("KINETIC_HTTP_TIMEOUT", "120"))
# How often a workspace tells the hub it is in use (a computing kernel counts, no browser needed);
# the idle culler reads that. JupyterHub's default is 300 s; keep it well under KINETIC_IDLE_TIMEOUT.
c.Spawner.environment = {"JUPYTERHUB_ACTIVITY_INTERVAL": env("KINETIC_ACTIVITY_INTERVAL", "300")}
c.Spawner.start_timeout = int(env("KINETIC_START_TIMEOUT", "600"))
# Workspace containers: limits per workspace (KINETIC_WORKSPACE_MEMORY, _CPUS, _PIDS); every other
# option is `c.ContainerBackend.<name>` (jupyterhub --help-all lists them with their help).
c.ContainerBackend.memory_limit = env("KINETIC_WORKSPACE_MEMORY", "2g")
c.ContainerBackend.cpu_limit = float(env("KINETIC_WORKSPACE_CPUS", "1.0"))
c.ContainerBackend.pids_limit = int(env("KINETIC_WORKSPACE_PIDS", "512"))
c.ContainerBackend.orphan_grace_seconds = float(env("KINETIC_ORPHAN_GRACE_SECONDS", "60"))

if PROFILE == "local":
    # the demo's SQLite database follows the hub across upgrades (JupyterHub backs it up first);
    # in production, migrations are an explicit step (README, Operations)
    c.JupyterHub.upgrade_db = True
    keys = ensure_standin_keys(STATE)
    c.KineticAuthenticator.sso_public_key_file = str(STATE / "keys" / "sso_public_key.pem")
    c.KineticAuthenticator.sso_encryption_key_file = str(STATE / "keys" / "sso_encryption_key")
    c.Authenticator.admin_users = set(seed.ADMINS)
    c.HomesOnThisHost.workspaces_root = str(STATE / "workspaces")
elif PROFILE == "aws":
    # Production skeleton: the real Kinetic and EC2. Keys are files mounted from a secret store.
    c.KineticAuthenticator.sso_public_key_file = env("KINETIC_SSO_PUBLIC_KEY_FILE")
    c.KineticAuthenticator.sso_encryption_key_file = env("KINETIC_SSO_ENCRYPTION_KEY_FILE")
    c.Authenticator.admin_users = set(filter(None, env("KINETIC_ADMIN_UUIDS").split(",")))
    c.JupyterHub.db_url = env("KINETIC_DB_URL")
else:
    raise SystemExit(f"KINETIC_PROFILE must be 'local' or 'aws', not {PROFILE!r}")

# -- the enclave: submit, checks, isolated run, review, release ------------------------------------
from enclave_service.hub_integration import configure_enclave_service  # noqa: E402

if PROFILE == "local":
    configure_enclave_service(
        c,
        state_dir=STATE / "enclave",
        kinetic_url=KINETIC_URL,
        public_url=PUBLIC_HUB_URL,
        reviewers=seed.REVIEWERS,
        port=int(env("KINETIC_ENCLAVE_PORT", "10101")),
        smtp_port=int(env("KINETIC_SMTP_PORT", "8925")),
        mail_sink_dir=STATE / "mail",
        enclave_key_file=STATE / "keys" / "kinetic_enclave_key",
        runner="podman",
        workspaces_root=STATE / "workspaces",
        required_approvals=int(env("KINETIC_REQUIRED_APPROVALS", "2")),
    )
else:
    configure_enclave_service(
        c,
        state_dir=env("KINETIC_ENCLAVE_STATE_DIR", str(STATE / "enclave")),
        kinetic_url=KINETIC_URL,
        public_url=PUBLIC_HUB_URL,
        reviewers=env("KINETIC_REVIEWER_UUIDS").split(","),
        smtp_host=env("KINETIC_SMTP_HOST"),
        smtp_port=int(env("KINETIC_SMTP_PORT", "587")),
        enclave_key_file=env("KINETIC_ENCLAVE_KEY_FILE"),
        runner="ec2",
        db_url=env("KINETIC_ENCLAVE_DB_URL"),
        port=int(env("KINETIC_ENCLAVE_PORT", "10101")),
    )  # (ops) the aws profile honours it too

# Managed services end with the hub, however it ends (SIGKILL included): a restarted hub then
# starts exactly one of each instead of tripping over orphans (hub_config/die_with_hub.py).
for _service in c.JupyterHub.services:
    if _service.get("command") and _service["command"][:3] != [
        sys.executable,
        "-m",
        "hub_config.die_with_hub",
    ]:
        _service["command"] = [sys.executable, "-m", "hub_config.die_with_hub", "--", *_service["command"]]
        _service.setdefault("environment", {})
        _service["environment"]["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(ROOT), _service["environment"].get("PYTHONPATH", "")) if p
        )

# Local tweaks without editing this file (e.g. for tests): a Python file run in this namespace.
extra = os.environ.get("KINETIC_EXTRA_CONFIG")
if extra:
    exec(compile(Path(extra).read_text(), extra, "exec"))  # noqa: S102 (operator-supplied config)
