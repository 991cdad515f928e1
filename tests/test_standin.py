"""The stand-in speaks Kinetic's shapes: cookie format, authorization by cookie, data, enclave API."""

import json

import requests

from kinetic_auth import cookie as sso
from kinetic_auth.keys import ensure_standin_keys
from kinetic_auth.standin.seed import ADA, GRACE, KATHERINE


def test_sign_in_sets_a_real_format_sso_cookie(standin):
    s = requests.Session()
    token = standin.sign_in(s, ADA)
    keys = ensure_standin_keys(standin.state_dir)
    who = sso.decode(
        token, sso.load_signing_key(keys.public_key_pem), sso.load_encryption_key(keys.encryption_key)
    )
    assert who.uuid == ADA
    assert token.count(".") == 4  # compact JWE


def test_analysis_detail_is_404_for_a_researcher_not_on_it(standin):
    ada, kat = requests.Session(), requests.Session()
    standin.sign_in(ada, ADA)
    standin.sign_in(kat, KATHERINE)
    assert ada.get(f"{standin.browser_url}/api/v1/researcher/analysis/101").json()["title"]
    assert kat.get(f"{standin.browser_url}/api/v1/researcher/analysis/101").status_code == 404
    assert requests.get(f"{standin.browser_url}/api/v1/researcher/analysis/101").status_code == 401
    mine = ada.get(f"{standin.browser_url}/api/v1/researcher/analysis").json()["data"]
    assert {a["id"] for a in mine} == {101, 102}


def test_shared_analysis_lists_both_researchers(standin):
    s = requests.Session()
    standin.sign_in(s, GRACE)
    a = s.get(f"{standin.browser_url}/api/v1/researcher/analysis/101").json()
    assert {r["user_id"] for r in a["researchers"]} == {ADA, GRACE}


def test_real_data_needs_the_enclave_key(standin):
    s = requests.Session()
    standin.sign_in(s, ADA)
    key = s.get(f"{standin.browser_url}/api/v1/researcher/analysis/101").json()["api_key"]
    syn = requests.get(f"{standin.browser_url}/api/v1/researcher/responses/{key}?cutoff=2026-01-01").json()
    assert syn["status"] == "complete" and "/synthetic/" in syn["response_urls"][0]
    csv = requests.get(syn["response_urls"][0]).text
    assert csv.startswith("student_id,") and "synthetic-0001" in csv
    bad = requests.get(
        f"{standin.browser_url}/api/v1/researcher/responses/{key}", headers={"Authorization": "Bearer nope"}
    )
    assert bad.status_code == 401
    enclave_key = ensure_standin_keys(standin.state_dir).enclave_key
    real = requests.get(
        f"{standin.browser_url}/api/v1/researcher/responses/{key}?cutoff=2026-01-01",
        headers={"Authorization": f"Bearer {enclave_key}"},
    ).json()
    assert "/real/" in real["response_urls"][0]


def test_enclave_calls_are_recorded(standin):
    key = ensure_standin_keys(standin.state_dir).enclave_key
    h = {"Authorization": f"Bearer {key}"}
    run = requests.post(
        f"{standin.browser_url}/api/v1/enclave/runs", json={"analysis_id": 102, "message": "go"}, headers=h
    ).json()
    assert run["api_key"].startswith("r") and run["analysis_api_key"].startswith("a")
    assert requests.post(
        f"{standin.browser_url}/api/v1/enclave/runs/log",
        headers=h,
        json={"api_key": run["api_key"], "stage": "run", "level": "info", "message": "hello"},
    ).ok
    assert (
        requests.post(
            f"{standin.browser_url}/api/v1/enclave/runs/log",
            headers=h,
            json={"api_key": run["api_key"], "stage": "bogus", "level": "info", "message": "x"},
        ).status_code
        == 400
    )
    assert requests.put(
        f"{standin.browser_url}/api/v1/enclave/runs/completion",
        headers=h,
        json={"api_key": run["api_key"], "status": "failure"},
    ).ok
    ends = [r["endpoint"] for r in standin.records()["records"]]
    assert ends[-3:] == ["runs", "log", "completion"]


def test_records_need_the_token_and_never_hold_keys(standin):
    key = ensure_standin_keys(standin.state_dir).enclave_key
    h = {"Authorization": f"Bearer {key}"}
    run = requests.post(
        f"{standin.browser_url}/api/v1/enclave/runs", json={"analysis_id": 101, "message": "k"}, headers=h
    ).json()
    assert requests.post(
        f"{standin.browser_url}/api/v1/enclave/runs/log",
        headers=h,
        json={"api_key": run["api_key"], "stage": "run", "level": "info", "message": "x"},
    ).ok
    # a workspace can reach the stand-in over the network: without the token, nothing
    for headers in ({}, {"Authorization": "Bearer wrong"}, h):
        r = requests.get(f"{standin.browser_url}/standin/records", headers=headers)
        assert r.status_code == 401, headers
        assert run["api_key"] not in r.text
    data = standin.records()
    text = json.dumps(data)
    s = requests.Session()
    standin.sign_in(s, ADA)
    analysis_key = s.get(f"{standin.browser_url}/api/v1/researcher/analysis/101").json()["api_key"]
    for secret in (run["api_key"], run["analysis_api_key"], analysis_key, key):
        assert secret not in text
    for page in ("/",):  # the demo's index page lists records too
        assert run["api_key"] not in requests.get(standin.url + page).text
    assert run["api_key"] not in (standin.state_dir / "standin-enclave-calls.jsonl").read_text()
    # still comparable: the run and its log lines carry the same fingerprint
    mine = next(r for r in data["runs"] if r["id"] == run["id"])
    assert mine["api_key"].startswith("masked:")
    assert any(
        rec["endpoint"] == "log" and rec["body"]["api_key"] == mine["api_key"] for rec in data["records"]
    )


ALLOWED = "http://127.0.0.1:8000/hub/login?next=%2Fhub%2Fhome"
HOSTILE_RETURNS = [
    "/\\evil.example",
    "/\\/evil.example",
    "\\\\evil.example",
    "//evil.example",
    "///evil.example",
    "/\t/evil.example",
    "/\n/evil.example",
    "/\r/evil.example",
    "\t//evil.example",
    "http://evil.example/",
    "https://evil.example/x",
    "http://127.0.0.1\\@evil.example/",
    "http://evil.example\\@127.0.0.1/",
    "http://127.0.0.1@evil.example/",
    "http://user@127.0.0.1/",
    "http:\\\\evil.example",
    "http:/\\evil.example",
    "http:evil.example",
    "javascript:alert(1)",
    "JavaScript:alert(1)",
    " javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "http://127.0.0.1:99999/",
    "http://127.0.0.1.evil.example/",
    "http://localhost%2eevil.example/",
]


def _return_of(standin, r):
    s = requests.Session()
    resp = s.post(f"{standin.browser_url}/accounts/login", data={"uuid": ADA, "r": r}, allow_redirects=False)
    assert resp.status_code == 302, (r, resp.status_code)
    return resp.headers["Location"]


def test_return_links_stay_on_the_allowed_origins(standin):
    for r in HOSTILE_RETURNS:
        assert _return_of(standin, r) == "/", repr(r)
    # what the hub sends still works, and so do paths on the stand-in itself
    assert _return_of(standin, ALLOWED) == ALLOWED
    assert _return_of(standin, "https://localhost/hub/") == "https://localhost/hub/"
    assert _return_of(standin, "/accounts/login?x=1") == "/accounts/login?x=1"
    # the sign-in page's form carries the checked link, not the raw one
    page = requests.get(f"{standin.browser_url}/accounts/login", params={"r": "/\\evil.example"}).text
    assert "evil.example" not in page


def test_every_return_link_resolves_to_an_allowed_origin_as_a_browser_would(standin):
    """Independent of the check's own logic: resolve each answer against the stand-in's URL with
    WHATWG-like rules (backslash is slash, tab/newline dropped) and compare origins."""
    from urllib.parse import urljoin, urlsplit

    base = standin.url + "/accounts/login"
    for r in HOSTILE_RETURNS + [ALLOWED]:
        location = _return_of(standin, r)
        browser = location.replace("\\", "/").replace("\t", "").replace("\n", "").replace("\r", "")
        target = urlsplit(urljoin(base, browser))
        assert target.scheme in ("http", "https") and target.hostname in ("127.0.0.1", "localhost"), (
            r,
            location,
        )


def test_no_response_of_the_standin_can_be_framed(standin):
    """Every kind of answer — pages, API, redirects, refusals, tornado's own 404 — tells browsers
    never to show it inside another page (clickjacking on Kinetic's sign-in)."""
    key = ensure_standin_keys(standin.state_dir).enclave_key
    u = standin.url
    answers = [
        requests.get(f"{u}/"),
        requests.get(f"{u}/accounts/login"),
        requests.post(f"{u}/accounts/login", data={"uuid": ADA, "r": "/"}, allow_redirects=False),
        requests.post(f"{u}/accounts/login", data={"uuid": "nobody"}),
        requests.get(f"{u}/accounts/logout", allow_redirects=False),
        requests.get(f"{u}/accounts/api/user"),
        requests.get(f"{u}/api/v1/researcher/analysis"),
        requests.get(f"{u}/api/v1/researcher/analysis/101"),
        requests.get(f"{u}/api/v1/researcher/responses/nokey"),
        requests.get(f"{u}/api/v1/researcher/responses/101/info"),
        requests.get(f"{u}/data/101/synthetic/2026-01-01/00/responses.csv"),
        requests.post(f"{u}/api/v1/enclave/runs", json={}),
        requests.post(
            f"{u}/api/v1/enclave/runs", json={"analysis_id": 999}, headers={"Authorization": f"Bearer {key}"}
        ),
        requests.get(f"{u}/standin/records"),
        requests.get(f"{u}/no/such/page"),
        requests.head(f"{u}/accounts/login"),
    ]
    s = requests.Session()
    standin.sign_in(s, ADA)
    answers.append(s.get(f"{u}/api/v1/researcher/analysis/101"))
    assert {r.status_code for r in answers} >= {200, 302, 400, 401, 404, 405}
    for r in answers:
        where = (r.request.method, r.request.url, r.status_code)
        assert r.headers.get("Content-Security-Policy") == "frame-ancestors 'none'", where
        assert r.headers.get("X-Frame-Options") == "DENY", where


def test_a_handlers_own_policy_keeps_its_directives_and_gains_frame_ancestors():
    from tornado.httputil import HTTPHeaders

    from kinetic_auth.frame_headers import NoFraming

    def sent(headers):
        return NoFraming(None).transform_first_chunk(200, HTTPHeaders(headers), b"x", True)[1]

    h = sent({"Content-Security-Policy": "sandbox;"})
    assert h["Content-Security-Policy"] == "sandbox; frame-ancestors 'none'"
    h = sent(
        {
            "Content-Security-Policy": "default-src 'none'; frame-ancestors 'self'",
            "X-Frame-Options": "SAMEORIGIN",
        }
    )
    assert h["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'self'"  # its own choice
    assert h["X-Frame-Options"] == "SAMEORIGIN"


def test_membership_changes_want_the_records_token_and_take_effect(standin):
    url = f"{standin.browser_url}/standin/analyses/101/researchers"
    for headers in ({}, {"Authorization": "Bearer nope"}):
        assert requests.put(url, json={"researchers": [ADA]}, headers=headers).status_code == 401
    good = {"Authorization": f"Bearer {standin.records_token()}"}
    assert requests.put(url, json={"researchers": ["nobody"]}, headers=good).status_code == 400
    grace = requests.Session()
    standin.sign_in(grace, GRACE)
    try:
        standin.set_researchers(101, [ADA])
        assert grace.get(f"{standin.browser_url}/api/v1/researcher/analysis/101").status_code == 404
    finally:
        standin.set_researchers(101, [ADA, GRACE])
    assert grace.get(f"{standin.browser_url}/api/v1/researcher/analysis/101").status_code == 200


def test_signing_out_ends_the_kinetic_session_for_every_copy_of_the_cookie(standin):
    """The hub keeps a copy of the cookie to ask Kinetic as the researcher: after sign-out, Kinetic
    refuses that copy too (not only the browser, which simply loses the cookie)."""
    browser = requests.Session()
    token = standin.sign_in(browser, KATHERINE)
    copy = {"Cookie": f"oxa={token}"}
    assert requests.get(f"{standin.browser_url}/accounts/api/user", headers=copy).status_code == 200
    standin.sign_out(browser)
    assert requests.get(f"{standin.browser_url}/accounts/api/user", headers=copy).status_code == 401
    again = requests.Session()
    standin.sign_in(again, KATHERINE)  # a new sign-in works
    assert again.get(f"{standin.browser_url}/accounts/api/user").status_code == 200
