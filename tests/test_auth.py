"""Signing in from Kinetic: the SSO cookie is the only way in, and a bad one is refused in words."""

import os
import re
import time
from urllib.parse import parse_qs, urlparse

import requests
from joserfc.jwk import OctKey, RSAKey

from kinetic_auth import cookie as sso
from kinetic_auth.keys import ensure_standin_keys
from kinetic_auth.standin.seed import ADA, KATHERINE, OLIVIA


def _keys(standin):
    k = ensure_standin_keys(standin.state_dir)
    return sso.load_signing_key(k.signing_key_pem), sso.load_encryption_key(k.encryption_key)


def _claims(uuid, **extra):
    return {"sub": {"uuid": uuid, "is_test": False}, "exp": int(time.time()) + 3600, **extra}


def _login_with(hub, token):
    s = requests.Session()
    s.cookies.set("oxa", token, domain="localhost.local", path="/")  # host-only on localhost
    return s, s.get(f"{hub.url}/hub/login", allow_redirects=False)


def test_no_cookie_sends_the_researcher_to_kinetic_with_a_return_link(hub, standin):
    r = requests.get(f"{hub.url}/hub/home", allow_redirects=True)
    assert r.url.startswith(f"{standin.browser_url}/accounts/login")
    back = parse_qs(urlparse(r.url).query)["r"][0]
    assert back.startswith(f"{hub.url}/hub/login")
    assert "Choose who you are" in r.text


def test_sign_in_lists_the_researchers_analyses(hub):
    s = hub.browser_session(ADA)
    home = s.get(f"{hub.url}/hub/home")
    assert home.status_code == 200
    assert "Reading time and quiz scores" in home.text and "Spaced practice effects" in home.text
    assert "Hint usage by course" not in home.text  # Grace's alone
    assert 'href="/hub/analysis/101"' in home.text
    visible = re.sub(r"<(noscript|script|style|head)\b.*?</\1>|<[^>]+>", " ", home.text, flags=re.S)
    assert "JupyterHub" not in visible and "Kinetic" in visible  # no jargon shown to researchers


def test_kinetic_text_is_escaped_on_the_home_page(hub):
    s = hub.browser_session(KATHERINE)
    home = s.get(f"{hub.url}/hub/home").text
    assert "&lt;img src=x" in home and "<img src=x" not in home
    assert "&lt;script&gt;window.__pwned=2" in home


def test_forged_tampered_wrong_key_expired_and_garbage_cookies_are_refused(hub, standin):
    signing, enc = _keys(standin)
    good = sso.encode(_claims(ADA), signing, enc)
    forged = sso.encode(_claims(ADA), RSAKey.generate_key(2048), enc)  # right encryption, wrong signer
    wrong_key = sso.encode(_claims(ADA), signing, OctKey.import_key(os.urandom(32)))
    expired = sso.encode(_claims(ADA, exp=int(time.time()) - 7200), signing, enc)
    parts = good.split(".")
    parts[3] = parts[3][:-4] + ("AAAA" if parts[3][-4:] != "AAAA" else "BBBB")
    tampered = ".".join(parts)
    cases = {
        "forged": forged,
        "tampered": tampered,
        "wrong key": wrong_key,
        "expired": expired,
        "garbage": "not-a-token",
    }
    reasons = {
        "forged": "signature",
        "tampered": "decrypted",
        "wrong key": "decrypted",
        "expired": "expired",
        "garbage": "not an encrypted",
    }
    for name, token in cases.items():
        s, r = _login_with(hub, token)
        assert r.status_code == 403, (name, r.status_code)
        assert reasons[name] in r.text, (name, r.text[:300])
        assert "Sign in to Kinetic again" in r.text
        assert s.get(f"{hub.url}/hub/api/user").status_code == 403, name  # no hub session
    s, r = _login_with(hub, good)
    assert r.status_code == 302 and r.headers["Location"].endswith("/hub/home")
    log = hub.log()
    for token in [good, *cases.values()]:
        if len(token) > 20:
            assert token not in log and token[-40:] not in log


def test_signing_out_of_kinetic_ends_the_hub_session(hub, standin):
    s = hub.browser_session(ADA)
    assert s.get(f"{hub.url}/hub/home", allow_redirects=False).status_code == 200
    s.get(f"{standin.browser_url}/accounts/logout", allow_redirects=False)
    time.sleep(1.5)  # past auth_refresh_age (1 s in tests)
    r = s.get(f"{hub.url}/hub/home", allow_redirects=False)
    assert r.status_code == 302 and "/hub/login" in r.headers["Location"]


def test_hub_logout_also_ends_the_kinetic_session(hub, standin):
    s = hub.browser_session(ADA)
    r = s.get(f"{hub.url}/hub/logout", allow_redirects=True)
    assert r.url.startswith(f"{standin.browser_url}/accounts/login")
    assert "oxa" not in s.cookies


def test_admins_are_the_configured_uuids(hub):
    assert hub.browser_session(OLIVIA).get(f"{hub.url}/hub/admin").status_code == 200
    assert hub.browser_session(ADA).get(f"{hub.url}/hub/admin").status_code == 403


def test_old_editor_link_is_served(hub):
    r = requests.get(f"{hub.url}/editor/", allow_redirects=True)
    assert r.status_code == 200 and "analysis/" in r.text and "location.hash" in r.text


def test_signing_in_to_kinetic_as_someone_else_ends_the_hub_session(hub, standin):
    s = hub.browser_session(ADA)
    assert s.get(f"{hub.url}/hub/home", allow_redirects=False).status_code == 200
    standin.sign_in(s, KATHERINE)  # same browser, another Kinetic account
    time.sleep(1.5)  # past auth_refresh_age (1 s in tests)
    r = s.get(f"{hub.url}/hub/home", allow_redirects=False)
    assert r.status_code == 302 and "/hub/login" in r.headers["Location"]


async def test_without_keys_the_hub_asks_kinetic_who_the_cookie_belongs_to(standin):
    from kinetic_auth.authenticator import KineticAuthenticator

    auth = KineticAuthenticator(kinetic_url=standin.url)  # no key files configured
    assert auth.keys() is None
    token = standin.sign_in(requests.Session(), ADA)
    assert (await auth.identify(token)).uuid == ADA
    user = await auth.authenticate(None, {"sso_cookie": token})
    assert user["name"] == ADA and user["auth_state"]["profile"]["first_name"] == "Ada"
    try:
        await auth.identify("not-a-token")
    except sso.CookieError as e:
        assert "does not recognise" in e.reason
    else:
        raise AssertionError("a cookie Kinetic does not know was accepted")
    auth.ask_kinetic_without_keys = False
    try:
        await auth.identify(token)
    except sso.CookieError as e:
        assert "no keys" in e.reason
    else:
        raise AssertionError("accepted a cookie with neither keys nor Kinetic to check it")


def _set_cookies(resp) -> dict[str, dict[str, str]]:
    """{name: {attribute (lower case): value}} of every Set-Cookie header of one response."""
    out = {}
    for header in resp.raw.headers.getlist("Set-Cookie"):
        first, *attrs = [p.strip() for p in header.split(";")]
        name = first.split("=", 1)[0]
        out[name] = {a.split("=", 1)[0].lower(): (a.split("=", 1)[1] if "=" in a else "") for a in attrs}
    return out


def test_the_hubs_cookies_are_samesite_lax_and_httponly(hub, standin):
    """A request another site starts (a form, an image, a fetch) carries none of the hub's cookies;
    a top-level link does, which is how signing in arrives from Kinetic. Not Secure over the demo's
    http (a Secure cookie would be dropped and nobody could sign in)."""
    s = requests.Session()
    standin.sign_in(s, ADA)
    login = s.get(f"{hub.url}/hub/login", allow_redirects=False)
    assert login.status_code == 302, login.status_code
    cookies = _set_cookies(login)
    assert {"jupyterhub-hub-login", "jupyterhub-session-id"} <= set(cookies), cookies
    home = s.get(f"{hub.url}/hub/home", allow_redirects=False)
    assert home.status_code == 200  # the session the cookies carry works
    cookies.update(_set_cookies(home))  # the XSRF cookie (its forms)
    assert "_xsrf" in cookies, cookies
    for name, attrs in cookies.items():
        if name == "oxa":
            continue  # Kinetic's (the stand-in's) own
        assert attrs.get("samesite", "").lower() == "lax", (name, attrs)
        assert "secure" not in attrs, (name, attrs)
        if name != "_xsrf":
            assert "httponly" in attrs, (name, attrs)
