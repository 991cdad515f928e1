"""The Kinetic stand-in server (tornado).

It speaks the shapes of the real Kinetic API (see ../shared/ORIGINAL.md in the design notes):
a sign-in page that sets a real-format SSO cookie, the researcher API authorized by that cookie,
the responses API (synthetic data; real data only with the enclave Bearer key), and the enclave
run API, whose calls are recorded so tests and the demo can see what the enclave reported.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import logging
import random
import re
import secrets
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tornado import web
from tornado.httpserver import HTTPServer

from .. import cookie as sso
from ..frame_headers import refuse_framing
from ..keys import _write_secret, ensure_standin_keys
from .seed import default_seed

log = logging.getLogger("kinetic.standin")
TEMPLATES = Path(__file__).parent / "templates"
SESSION_SECONDS = 12 * 3600


SECRET_FIELDS = ("api_key", "analysis_api_key")


def masked(value):
    """A copy with every key-like field replaced by a fingerprint: records stay comparable
    (the same key gives the same fingerprint) but never hand a usable key out."""
    if isinstance(value, dict):
        return {
            k: (fingerprint(v) if k in SECRET_FIELDS and isinstance(v, str) else masked(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


def fingerprint(secret: str) -> str:
    return "masked:" + hashlib.sha256(secret.encode()).hexdigest()[:16]


def records_token(state_dir: Path) -> str:
    """The token /standin/records asks for: made once, readable only by the state dir's owner
    (the tests, an operator) — never by a workspace, which can reach the stand-in over the network."""
    path = Path(state_dir) / "keys" / "standin_records_token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            _write_secret(path, secrets.token_hex(32).encode())
        except FileExistsError:
            pass
    return path.read_text().strip()


class StandinState:
    """Everything the stand-in knows, in memory; enclave calls are also appended to a JSONL file."""

    def __init__(self, seed: dict, state_dir: Path, public_url: str, cookie_name: str):
        self.keys = ensure_standin_keys(state_dir)
        self.signing_key = sso.load_signing_key(self.keys.signing_key_pem)
        self.public_key = sso.load_signing_key(self.keys.public_key_pem)
        self.encryption_key = sso.load_encryption_key(self.keys.encryption_key)
        self.public_url = public_url.rstrip("/")
        self.cookie_name = cookie_name
        self.researchers = {r["uuid"]: r for r in seed["researchers"]}
        self.analyses = {}
        for a in seed["analyses"]:
            a = dict(a)
            # Keys are derived, so a restarted stand-in hands out the same ones.
            a.setdefault("api_key", "a" + self._derive("analysis", a["id"])[:31])
            self.analyses[str(a["id"])] = a
        self.runs: dict[str, dict] = {}
        self.records: list[dict] = []
        self.records_file = Path(state_dir) / "standin-enclave-calls.jsonl"
        self.records_token = records_token(Path(state_dir))
        self.data_secret = self._derive("data", "secret")
        # Sign-ins ended by signing out: Kinetic's session ends on its side too, so a copy of the
        # cookie (the hub keeps one to ask Kinetic as the researcher) stops working at once.
        self.signed_out: set[str] = set()

    def _derive(self, *parts) -> str:
        msg = "/".join(str(p) for p in parts).encode()
        return hmac.new(self.keys.encryption_key.encode(), msg, hashlib.sha256).hexdigest()

    def record(self, endpoint: str, body: dict) -> None:
        entry = {"time": time.time(), "endpoint": endpoint, "body": masked(body)}
        self.records.append(entry)
        with self.records_file.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def researcher_from_cookie(self, token: str | None) -> dict | None:
        if not token or fingerprint(token) in self.signed_out:
            return None
        try:
            who = sso.decode(token, self.public_key, self.encryption_key)
        except sso.CookieError:
            return None
        return self.researchers.get(who.uuid)

    def analysis_view(self, a: dict) -> dict:
        people = [self.researchers[u] for u in a["researchers"] if u in self.researchers]
        return {
            "id": a["id"],
            "title": a["title"],
            "description": a.get("description", ""),
            "repository_url": a.get("repository_url", ""),
            "api_key": a["api_key"],
            "researchers": [
                {"user_id": p["uuid"], "first_name": p["first_name"], "last_name": p["last_name"]}
                for p in people
            ],
            "study_ids": a.get("study_ids", []),
            "studies": [{"id": s, "title": f"Study {s}"} for s in a.get("study_ids", [])],
            "runs": [r for r in self.runs.values() if str(r["analysis_id"]) == str(a["id"])],
        }

    def data_token(self, api_key: str, kind: str, cutoff: str) -> str:
        return hmac.new(
            self.data_secret.encode(), f"{api_key}/{kind}/{cutoff}".encode(), hashlib.sha256
        ).hexdigest()


def make_csv(analysis_id: str, kind: str, cutoff: str, rows: int = 120) -> str:
    """Response data. Synthetic and real share columns; real data carries a student identifier,
    which the enclave's output checks must keep from leaving."""
    rng = random.Random(f"{analysis_id}/{kind}/{cutoff}")
    header = ["student_id", "course", "week", "minutes_reading", "quiz_score"]
    out = [",".join(header)]
    for i in range(rows):
        sid = f"S{rng.randrange(10**7, 10**8)}" if kind == "real" else f"synthetic-{i + 1:04d}"
        out.append(
            ",".join(
                [
                    sid,
                    rng.choice(["biology", "physics", "statistics"]),
                    str(rng.randint(1, 12)),
                    str(rng.randint(0, 90)),
                    str(rng.randint(0, 100)),
                ]
            )
        )
    return "\n".join(out) + "\n"


class Base(web.RequestHandler):
    @property
    def state(self) -> StandinState:
        return self.settings["standin"]

    def researcher(self) -> dict | None:
        return self.state.researcher_from_cookie(self.get_cookie(self.state.cookie_name))

    def require_researcher(self) -> dict:
        who = self.researcher()
        if who is None:
            raise web.HTTPError(401, "sign in to Kinetic first")
        return who

    def require_enclave(self) -> None:
        auth = self.request.headers.get("Authorization", "")
        if not hmac.compare_digest(auth, f"Bearer {self.state.keys.enclave_key}"):
            raise web.HTTPError(401, "enclave key required")

    def json_body(self) -> dict:
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise web.HTTPError(400, "body is not JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPError(400, "body must be a JSON object")
        return body

    def write_error(self, status_code, **kwargs):
        reason = self._reason
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, web.HTTPError) and exc.log_message:
            reason = exc.log_message
        self.finish({"status": status_code, "error": reason})


class LoginPage(Base):
    # Characters a browser drops or reinterprets in a URL ("\\" is "/" in http(s) links; tab, CR, LF
    # are removed; other controls and spaces are never part of a link we hand out): a link with any
    # of them is refused rather than guessed at, so what we check is what the browser follows.
    _AMBIGUOUS = re.compile(r"[\\\x00-\x20\x7f]")

    def safe_return(self, r: str) -> str:
        """Where to send someone after sign-in: a path on this site, or an http(s) link to one of the
        allowed hosts (``return_hosts``). Anything else — another site, ``//host``, ``/\\host``,
        ``javascript:``, user-info tricks, tabs or newlines hiding a ``//`` — becomes "/"."""
        if not r or self._AMBIGUOUS.search(r):
            return "/"
        if r.startswith("/"):
            return r if not r.startswith("//") else "/"
        try:
            target = urlsplit(r)
            host, port = target.hostname, target.port  # port: raises on a malformed one
        except ValueError:
            return "/"
        if (
            target.scheme.lower() not in ("http", "https")
            or "@" in target.netloc
            or host not in self.settings["return_hosts"]
        ):
            return "/"
        netloc = host if port is None else f"{host}:{port}"
        return urlunsplit((target.scheme.lower(), netloc, target.path or "/", target.query, target.fragment))

    def get(self):
        self.render(
            "login.html",
            researchers=list(self.state.researchers.values()),
            r=self.safe_return(self.get_argument("r", "")),
            current=self.researcher(),
        )

    def post(self):
        uuid = self.get_body_argument("uuid", "")
        if uuid not in self.state.researchers:
            raise web.HTTPError(400, "unknown researcher")
        claims = {
            "sub": {"uuid": uuid, "is_test": False},
            "iat": int(time.time()),
            "exp": int(time.time()) + SESSION_SECONDS,
            "iss": "kinetic-standin",
        }
        token = sso.encode(claims, self.state.signing_key, self.state.encryption_key)
        self.set_cookie(self.state.cookie_name, token, path="/", httponly=True, samesite="Lax")
        self.redirect(self.safe_return(self.get_body_argument("r", "")))


class LogoutPage(LoginPage):
    def get(self):
        token = self.get_cookie(self.state.cookie_name)
        if token:
            self.state.signed_out.add(fingerprint(token))
        self.clear_cookie(self.state.cookie_name, path="/")
        self.redirect(
            self.safe_return(self.get_argument("r", "")) if self.get_argument("r", "") else "/accounts/login"
        )


class WhoAmI(Base):
    def get(self):
        who = self.require_researcher()
        self.finish(
            {
                "uuid": who["uuid"],
                "first_name": who["first_name"],
                "last_name": who["last_name"],
                "email": who.get("email", ""),
            }
        )


class AnalysisList(Base):
    def get(self):
        who = self.require_researcher()
        mine = [
            self.state.analysis_view(a)
            for a in self.state.analyses.values()
            if who["uuid"] in a["researchers"]
        ]
        self.finish({"data": mine})


class AnalysisDetail(Base):
    def get(self, analysis_id):
        who = self.require_researcher()
        a = self.state.analyses.get(analysis_id)
        if a is None or who["uuid"] not in a["researchers"]:
            raise web.HTTPError(404, "no such analysis")  # the same answer: existence is not leaked
        self.finish(self.state.analysis_view(a))


class Responses(Base):
    def get(self, api_key):
        a = next((a for a in self.state.analyses.values() if a["api_key"] == api_key), None)
        if a is None:
            raise web.HTTPError(404, "no such analysis key")
        cutoff = self.get_argument("cutoff", time.strftime("%Y-%m-%d"))
        kind = "synthetic"
        if self.request.headers.get("Authorization"):
            self.require_enclave()
            kind = "real"
        token = self.state.data_token(api_key, kind, cutoff)
        # on the origin the caller used (as a real presigned URL is reachable by whoever asked):
        # a workspace container reaches the stand-in by another address than a browser does
        origin = f"{self.request.protocol}://{self.request.host}"
        url = f"{origin}/data/{a['id']}/{kind}/{cutoff}/{token}/responses.csv"
        self.finish({"status": "complete", "response_urls": [url]})


class ResponsesInfo(Base):
    def get(self, analysis_id):
        who = self.require_researcher()
        a = self.state.analyses.get(analysis_id)
        if a is None or who["uuid"] not in a["researchers"]:
            raise web.HTTPError(404, "no such analysis")
        self.finish({"info_urls": [f"{self.state.public_url}/info/{analysis_id}/codebook.html"]})


class DataFile(Base):
    def get(self, analysis_id, kind, cutoff, token):
        a = self.state.analyses.get(analysis_id)
        expected = self.state.data_token(a["api_key"], kind, cutoff) if a else ""
        if not a or not hmac.compare_digest(token, expected):
            raise web.HTTPError(404, "no such file")
        self.set_header("Content-Type", "text/csv")
        self.finish(make_csv(analysis_id, kind, cutoff))


class EnclaveRuns(Base):
    def post(self):
        self.require_enclave()
        body = self.json_body()
        a = self.state.analyses.get(str(body.get("analysis_id")))
        if a is None:
            raise web.HTTPError(404, "no such analysis")
        run = {
            "id": len(self.state.runs) + 1,
            "api_key": "r" + secrets.token_hex(16),
            "status": "pending",
            "message": body.get("message", ""),
            "analysis_id": a["id"],
            "analysis_api_key": a["api_key"],
            "logs": [],
        }
        self.state.runs[run["api_key"]] = run
        self.state.record("runs", body)
        self.finish(run)


class EnclaveLog(Base):
    STAGES = {"archive", "review", "package", "run", "check", "end"}
    LEVELS = {"info", "error", "debug"}

    def post(self):
        self.require_enclave()
        body = self.json_body()
        run = self.state.runs.get(body.get("api_key", ""))
        if run is None:
            raise web.HTTPError(404, "no such run")
        if body.get("stage") not in self.STAGES or body.get("level") not in self.LEVELS:
            raise web.HTTPError(400, "bad stage or level")
        run["logs"].append({k: body[k] for k in ("stage", "level", "message")})
        self.state.record("log", body)
        self.finish({"ok": True})


class EnclaveUpload(Base):
    def post(self):
        self.require_enclave()
        run = self.state.runs.get(self.get_argument("api_key", ""))
        if run is None:
            raise web.HTTPError(404, "no such run")
        import base64

        md5 = base64.b64encode(hashlib.md5(self.request.body).digest()).decode()
        if self.request.headers.get("Content-MD5") != md5:
            raise web.HTTPError(400, "Content-MD5 does not match the upload")
        signed_id = "s" + secrets.token_hex(12)
        run["output"] = {"signed_id": signed_id, "bytes": len(self.request.body), "md5": md5}
        self.state.record(
            "upload_results",
            {"api_key": run["api_key"], "bytes": len(self.request.body), "md5": md5, "signed_id": signed_id},
        )
        self.finish({"signed_id": signed_id})


class EnclaveCompletion(Base):
    def put(self):
        self.require_enclave()
        body = self.json_body()
        run = self.state.runs.get(body.get("api_key", ""))
        if run is None:
            raise web.HTTPError(404, "no such run")
        if body.get("status") not in ("success", "failure"):
            raise web.HTTPError(400, "status must be success or failure")
        run["status"] = body["status"]
        self.state.record("completion", body)
        self.finish({"ok": True})


class TestOnly(Base):
    """Endpoints for tests only, behind the token in ``keys/standin_records_token``
    (``Authorization: Bearer <token>``)."""

    def prepare(self):
        auth = self.request.headers.get("Authorization", "")
        if not hmac.compare_digest(auth.encode(), f"Bearer {self.state.records_token}".encode()):
            raise web.HTTPError(401, "the records token is required")


class Records(TestOnly):
    """What the enclave told Kinetic, with every key masked."""

    def get(self):
        self.finish({"records": self.state.records, "runs": masked(list(self.state.runs.values()))})


class Researchers(TestOnly):
    """Who is on an analysis, changed as an analysis owner does in Kinetic:
    ``PUT {"researchers": [uuid, ...]}``."""

    def put(self, analysis_id):
        a = self.state.analyses.get(analysis_id)
        if a is None:
            raise web.HTTPError(404, "no such analysis")
        people = self.json_body().get("researchers")
        if not isinstance(people, list) or not all(p in self.state.researchers for p in people):
            raise web.HTTPError(400, "researchers must be a list of known researcher uuids")
        a["researchers"] = list(people)
        self.finish({"id": a["id"], "researchers": a["researchers"]})


class Index(Base):
    def get(self):
        self.render(
            "index.html",
            who=self.researcher(),
            records=self.state.records[-50:],
            analyses=list(self.state.analyses.values()),
        )


def make_app(
    seed: dict,
    state_dir: Path,
    public_url: str,
    cookie_name: str = "oxa",
    return_hosts: tuple = ("127.0.0.1", "localhost"),
) -> web.Application:
    state = StandinState(seed, Path(state_dir), public_url, cookie_name)
    app = web.Application(
        [
            (r"/", Index),
            (r"/accounts/login", LoginPage),
            (r"/accounts/logout", LogoutPage),
            (r"/accounts/api/user", WhoAmI),
            (r"/api/v1/researcher/analysis", AnalysisList),
            (r"/api/v1/researcher/analysis/([^/]+)", AnalysisDetail),
            (r"/api/v1/researcher/responses/([^/]+)/info", ResponsesInfo),
            (r"/api/v1/researcher/responses/([^/]+)", Responses),
            (r"/data/([^/]+)/(synthetic|real)/([0-9-]+)/([0-9a-f]+)/responses.csv", DataFile),
            (r"/api/v1/enclave/runs", EnclaveRuns),
            (r"/api/v1/enclave/runs/log", EnclaveLog),
            (r"/api/v1/enclave/runs/upload_results", EnclaveUpload),
            (r"/api/v1/enclave/runs/completion", EnclaveCompletion),
            (r"/standin/records", Records),
            (r"/standin/analyses/([^/]+)/researchers", Researchers),
        ],
        standin=state,
        template_path=str(TEMPLATES),
        return_hosts=set(return_hosts),
    )
    return refuse_framing(app)  # as Kinetic's own pages: never framed


def main(argv=None):
    p = argparse.ArgumentParser(description="Kinetic stand-in server")
    p.add_argument("--ip", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8900)
    p.add_argument("--state-dir", default="state")
    p.add_argument("--public-url", default="", help="URL this server is reached at (default http://ip:port)")
    p.add_argument("--cookie-name", default="oxa")
    p.add_argument("--seed", help="JSON file with researchers and analyses (default: the built-in seed)")
    p.add_argument(
        "--return-host",
        action="append",
        default=[],
        help="extra host name the sign-in page may send people back to",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[standin %(levelname)s] %(message)s")
    seed = json.loads(Path(args.seed).read_text()) if args.seed else default_seed()
    public_url = args.public_url or f"http://{args.ip}:{args.port}"
    app = make_app(
        seed,
        Path(args.state_dir),
        public_url,
        args.cookie_name,
        tuple(["127.0.0.1", "localhost", *args.return_host]),
    )
    server = HTTPServer(app, xheaders=True)
    server.listen(args.port, args.ip)
    log.info("Kinetic stand-in at %s", public_url)
    asyncio.get_event_loop().run_forever()


if __name__ == "__main__":
    main()
