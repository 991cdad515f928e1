"""The enclave service: a hub-managed tornado service at ``/services/enclave/``.

    python -m enclave_service.app          (started by JupyterHub; see hub_integration.py)

Configuration is a traitlets Application and comes one way: a config file (``--config=FILE``,
JSON or Python) that the hub writes for it (``configure_enclave_service``), or the command line
(``--EnclaveService.required_approvals=1``). The risk appetite (thresholds, limits, rule levels) is
part of it: ``EnclaveService.risk_appetite``. JupyterHub itself provides ``JUPYTERHUB_API_TOKEN``,
``JUPYTERHUB_SERVICE_URL``, ``JUPYTERHUB_SERVICE_PREFIX`` and the OAuth client settings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from pathlib import Path
from urllib.parse import urlparse

from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.httpserver import HTTPServer
from traitlets import Bool, Dict, Float, Integer, Unicode, default
from traitlets.config import Application

from .db import Database

log = logging.getLogger("enclave")
HERE = Path(__file__).parent


class EnclaveService(Application):
    name = "enclave-service"
    description = "Kinetic enclave: submit → checks → isolated run → review → release"

    state_dir = Unicode(
        "state/enclave", config=True, help="Folder for the database, archives, run folders and releases."
    )
    db_url = Unicode(config=True, help="SQLAlchemy URL; default: SQLite file enclave.sqlite in state_dir.")

    @default("db_url")
    def _db_url(self):
        return f"sqlite:///{Path(self.state_dir).resolve() / 'enclave.sqlite'}"

    kinetic_url = Unicode("", config=True, help="Base URL of Kinetic (or the stand-in). Empty: no Kinetic.")
    kinetic_cookie_name = Unicode(
        "oxa", config=True, help="Name of Kinetic's SSO cookie (oxa; oxa_staging on staging)."
    )
    enclave_key_file = Unicode(
        "",
        config=True,
        help="""File holding Kinetic's enclave Bearer key (real data
        and the enclave run API). Read at start; never logged, never given to a run. Empty: Kinetic
        sync and real-data staging are off.""",
    )
    kinetic_sync = Bool(
        True, config=True, help="Report runs to Kinetic (run, log lines, upload, completion)."
    )
    public_url = Unicode(
        "http://127.0.0.1:8000", config=True, help="The hub's public URL (mail links point to it)."
    )
    smtp_host = Unicode("127.0.0.1", config=True, help="SMTP server for release mail.")
    smtp_port = Integer(0, config=True, help="SMTP port (0 disables mail).")
    mail_from = Unicode(
        "Kinetic enclave <enclave@kinetic.invalid>", config=True, help="From address of release mail."
    )
    reviewers_group = Unicode("reviewers", config=True, help="Hub group whose members review outputs.")
    required_approvals = Integer(2, config=True, help="Independent approvals a release needs (default 2).")
    runner = Unicode(
        "podman",
        config=True,
        help="""Runner: 'podman' (this machine), 'ec2', or 'module:Class'
        for a custom implementation of enclave_service.runners.Runner. Its own options are set under
        its class name (PodmanRunner, EC2Runner) in the same configuration.""",
    )
    step_limits = Dict(
        config=True,
        help="""Time limit (seconds) per pipeline step, by step name
        (archive, code, build, run, outputs, review, release); unnamed steps keep their defaults.""",
    )
    max_parallel_runs = Integer(2, config=True, help="Runs the pipeline works on at the same time.")
    workspaces_root = Unicode(
        "",
        config=True,
        help="""Local backend: the folder that holds one workspace
        home per analysis (<root>/<analysis_id>). When set, a JSON submit {analysis_id, message}
        makes the service snapshot that folder itself. Empty: only archive uploads are accepted.""",
    )
    show_run_logs_to_researchers = Bool(
        False,
        config=True,
        help="""Show the run's console log to researchers.
        Off by default: the log of a run against real data can print real data, so it is shown to
        reviewers only (researchers see the failure reason in words).""",
    )
    max_archive_bytes = Integer(200 * 2**20, config=True, help="Largest archive upload accepted (bytes).")
    risk_appetite = Dict(
        config=True,
        help="""Overrides of the risk appetite (enclave_service/risk_appetite.yaml:
        archive, run, output_volume, outputs and code sections), merged over the defaults; e.g.
        {"outputs": {"min_cell_count": 20}}. Unknown keys stop the service at start with their name.""",
    )
    risk_appetite_file = Unicode(
        "",
        config=True,
        help="""A YAML file laid out like risk_appetite.yaml whose
        values replace the defaults (risk_appetite is merged on top of it).""",
    )
    enforce_output_volume = Bool(
        False,
        config=True,
        help="""Refuse to run an analysis when output/ cannot be
        a size-limited volume (the service is not root). Off: the limits are then checked after the run.""",
    )
    retention_days = Float(
        30,
        config=True,
        help="""Days a finished run's stored code archive and outputs
        are kept (counted from its final state); then they are deleted and the deletion is recorded
        in the run's timeline. The database rows (the audit trail) are never deleted. 0 keeps them
        forever. A failed or withdrawn run's outputs go at once.""",
    )
    release_retention_days = Float(
        90,
        config=True,
        help="""Days the release zip of a released run stays
        downloadable (counted from the release); then it is deleted and a download answers 410
        Gone. 0 keeps it forever.""",
    )
    prune_interval_seconds = Float(
        3600,
        config=True,
        help="""How often the janitor deletes what the retention
        periods no longer cover (it also runs at start-up).""",
    )

    ip = Unicode(config=True, help="Listen address (default: from JUPYTERHUB_SERVICE_URL).")
    port = Integer(config=True, help="Listen port (default: from JUPYTERHUB_SERVICE_URL).")

    @default("ip")
    def _ip(self):
        return urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")).hostname

    @default("port")
    def _port(self):
        return urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:10101")).port

    service_prefix = Unicode(config=True, help="URL prefix (JupyterHub sets JUPYTERHUB_SERVICE_PREFIX).")

    @default("service_prefix")
    def _prefix(self):
        return os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/enclave/")

    aliases = {"config": "EnclaveService.config_file"}
    config_file = Unicode("", config=True, help="Config file to load.")

    # -- runtime objects ------------------------------------------------------------------------
    def appetite(self):
        """The risk appetite this service judges by (defaults, then the file, then the dict)."""
        from .risk_appetite import RiskAppetite

        return RiskAppetite.from_config(self.risk_appetite, self.risk_appetite_file or None)

    def make_runner(self):
        name = self.runner
        if name in ("", "none"):
            return None
        if name == "podman":
            from .runners.podman import PodmanRunner

            return PodmanRunner(parent=self)
        if name == "ec2":
            from .runners.ec2 import EC2Runner

            runner = EC2Runner(parent=self)
            if "ssh_key_dir" not in self.config.get("EC2Runner", {}):
                runner.ssh_key_dir = str(Path(self.state_dir) / "run-ssh-keys")  # beside the service's state
            return runner
        module, _, cls = name.partition(":")
        import importlib

        return getattr(importlib.import_module(module), cls)(parent=self)

    async def start_service(self) -> Service:
        from kinetic_auth.kinetic import KineticClient

        from .kinetic_sync import KineticSync
        from .mail import Mailer
        from .output_volume import OutputVolume
        from .pipeline import Pipeline

        state = Path(self.state_dir).resolve()
        (state / "runs").mkdir(parents=True, exist_ok=True)
        (state / "enclave.pid").write_text(str(os.getpid()))
        key = ""
        if self.enclave_key_file:
            key = Path(self.enclave_key_file).read_text().strip()
        client = (
            KineticClient(self.kinetic_url, self.kinetic_cookie_name, enclave_key=key)
            if self.kinetic_url
            else None
        )
        sync = KineticSync(client if (self.kinetic_sync and key) else None)
        db = Database(self.db_url)
        mailer = Mailer(self.smtp_host, self.smtp_port, self.mail_from) if self.smtp_port else None
        appetite = self.appetite()
        pipeline = Pipeline(
            db=db,
            runs_dir=state / "runs",
            kinetic=sync,
            runner=self.make_runner(),
            mailer=mailer,
            public_url=self.public_url,
            service_prefix=self.service_prefix,
            limits=self.step_limits,
            archive_limits=appetite.archive,
            run_limits=appetite.run,
            output_rules=appetite.outputs,
            code_rules=appetite.code,
            output_volume=OutputVolume(appetite.output_volume, self.enforce_output_volume),
            max_parallel=self.max_parallel_runs,
            retention_days=self.retention_days,
            release_retention_days=self.release_retention_days,
        )
        service = Service(self, db, pipeline, client)
        return service

    def initialize(self, argv=None):
        super().initialize(argv)
        if self.config_file:
            self.load_config_file(self.config_file)
        self.appetite()  # a risk appetite that does not fit stops the service now, in words

    def start(self):
        logging.basicConfig(level=logging.INFO, format="[enclave %(levelname)s %(asctime)s] %(message)s")
        asyncio.run(self._main())

    async def _main(self):
        service = await self.start_service()
        app = make_web_app(service)
        server = HTTPServer(app, xheaders=True, max_body_size=self.max_archive_bytes + 2**20)
        server.listen(self.port, self.ip)
        log.info("enclave service at http://%s:%s%s", self.ip, self.port, self.service_prefix)
        resumed = await service.pipeline.resume_all()
        if resumed:
            log.info("resumed %d run(s) after start-up", len(resumed))
        service.pipeline.start_janitor(self.prune_interval_seconds)  # W7: retention, in the background
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping: runs in progress continue in their containers and resume at next start")
        server.stop()
        await service.pipeline.stop()
        service.db.close()


class Service:
    """What handlers share: configuration, database, pipeline, Kinetic, the hub API."""

    def __init__(self, config: EnclaveService, db: Database, pipeline, kinetic_client):
        self.config = config
        self.db = db
        self.pipeline = pipeline
        self.kinetic = kinetic_client
        self.prefix = config.service_prefix
        self.hub_api_url = os.environ.get("JUPYTERHUB_API_URL", "http://127.0.0.1:8081/hub/api").rstrip("/")
        self.hub_token = os.environ.get("JUPYTERHUB_API_TOKEN", "")
        self._users: dict[str, tuple[float, dict]] = {}

    async def hub_user(self, name: str, max_age: float = 15.0) -> dict | None:
        """The hub's model of a user (groups, auth_state), read with the service's own token."""
        cached = self._users.get(name)
        if cached and time.monotonic() - cached[0] < max_age:
            return cached[1]
        from urllib.parse import quote

        req = HTTPRequest(
            f"{self.hub_api_url}/users/{quote(name, safe='')}",
            headers={"Authorization": f"token {self.hub_token}"},
            request_timeout=10,
        )
        try:
            resp = await AsyncHTTPClient().fetch(req)
        except HTTPClientError as e:
            if e.code == 404:
                return None
            raise
        model = json.loads(resp.body)
        self._users[name] = (time.monotonic(), model)
        return model


def make_web_app(service: Service) -> web.Application:
    from jupyterhub.services.auth import HubOAuthCallbackHandler
    from jupyterhub.utils import url_path_join

    from kinetic_auth.frame_headers import refuse_framing

    from . import api, pages

    p = service.prefix
    routes = [
        (url_path_join(p, "oauth_callback"), HubOAuthCallbackHandler),
        *[(url_path_join(p, path), handler) for path, handler in api.ROUTES],
        *[(url_path_join(p, path), handler) for path, handler in pages.ROUTES],
    ]
    app = web.Application(
        routes,
        enclave=service,
        template_path=str(HERE / "templates"),
        cookie_secret=os.urandom(32),
        xsrf_cookies=False,
        autoescape="xhtml_escape",
        static_path=None,
    )
    return refuse_framing(app)  # every response, the OAuth callback and tornado's 404 included


def main(argv=None):
    EnclaveService.launch_instance(argv)


if __name__ == "__main__":
    main()
