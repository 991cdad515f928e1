"""Issue 7, attacks 1 and 2 in a real browser: a workspace is its own origin.

Grace and Ada are both on analysis 101; Grace is also on 103, which Ada is not. Whatever Ada's code
serves from 101's workspace runs, in Grace's browser, on 101's origin (analysis-101.localhost). Here
that code is played by ``page.evaluate`` on a page of 101's workspace that Grace has open: it can do
exactly what any script served there could. It must get none of Grace's credentials, reach nothing of
the hub as her, and nothing of 103.

Real hub, proxy, container workspaces, Kinetic stand-in and Chromium (which resolves *.localhost to
loopback by itself, as every modern browser does)."""

from __future__ import annotations

from kinetic_auth.standin.seed import ADA, GRACE

from .browser import chromium
from .hub import owner

# what the code in 101 tries, in Grace's browser; every answer (or refusal) comes back as data
ATTACK = """
async ({hub, grace, other}) => {
  const out = {cookies: document.cookie, origin: location.origin};
  async function attempt(name, url, options) {
    try {
      const r = await fetch(url, Object.assign({credentials: 'include'}, options || {}));
      out[name] = {status: r.status, url: r.url, type: r.type, body: (await r.text()).slice(0, 3000)};
    } catch (e) {
      out[name] = {blocked: String(e)};
    }
  }
  // a control: the page may fetch at all (its own workspace's files, as the visitor)
  // (JupyterHub asks a script's cookie-authenticated request for the XSRF token of its own origin)
  const xsrf = (document.cookie.match(/(?:^|; )_xsrf=([^;]*)/) || [])[1] || '';
  await attempt('own_files', 'api/contents/kinetic', {headers: {'X-XSRFToken': decodeURIComponent(xsrf)}});
  // the hub's paths on this (the workspace's) host
  await attempt('here_home', '/hub/home');
  await attempt('here_user', '/hub/api/user');
  await attempt('here_token', '/hub/api/users/' + grace + '/tokens',
                {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{}'});
  // the hub itself, cross-origin: read her pages, mint her a token (also as a "simple" request,
  // which a browser sends without asking, response unreadable)
  await attempt('hub_home', hub + '/hub/home');
  await attempt('hub_user', hub + '/hub/api/user');
  await attempt('hub_token', hub + '/hub/api/users/' + grace + '/tokens',
                {method: 'POST', headers: {'Content-Type': 'application/json'}, body: '{}'});
  await attempt('hub_token_simple', hub + '/hub/api/users/' + grace + '/tokens',
                {method: 'POST', mode: 'no-cors', headers: {'Content-Type': 'text/plain'}, body: '{}'});
  // another analysis's workspace, which Grace is signed in to
  await attempt('other_workspace', other + 'api/contents/kinetic');
  return out;
}
"""


async def test_code_served_from_a_shared_workspace_gets_nothing_of_its_visitor(hub):
    ada = hub.browser_session(ADA)
    hub.open_analysis(ada, 101)  # Ada opens 101; Grace joins it in her browser below
    hub.browser_session(GRACE)  # (her hub user exists, to count her tokens)
    tokens_before = {t["id"] for t in hub.api("GET", f"/users/{GRACE}/tokens").json()["api_tokens"]}
    sent_to_workspaces: list[tuple[str, str]] = []
    async with chromium() as browser:
        context = await browser.new_context()
        page = await context.new_page()

        async def note(request):
            if ".localhost:" in request.url and "//localhost:" not in request.url:
                try:
                    headers = await request.all_headers()
                except Exception:  # the browser closed meanwhile
                    return
                sent_to_workspaces.append((request.url, headers.get("cookie", "")))

        page.on("request", note)
        # Grace signs in (Kinetic, then the hub), opens 103 (her other analysis), then joins 101
        await page.goto(f"{hub.url}/hub/analysis/103")
        await page.click(f'button[data-uuid="{GRACE}"]')
        await page.wait_for_url(hub.workspace_url(103) + "**", timeout=120_000)
        await page.goto(f"{hub.url}/hub/analysis/101")
        await page.wait_for_url(hub.workspace_url(101) + "**", timeout=120_000)
        response = await page.goto(hub.workspace_url(101, "api/contents/kinetic"))
        assert response.status == 200 and "main.r" in await response.text()  # she is in 101
        csp = (await response.all_headers()).get("content-security-policy", "")
        assert "frame-ancestors" in csp, csp  # the workspace's pages may not be framed by others

        # the attack runs on a page of the workspace (JupyterLab's; its API's answers forbid scripts)
        await page.goto(hub.workspace_url(101, "lab"))
        out = await page.evaluate(ATTACK, {"hub": hub.url, "grace": GRACE, "other": hub.workspace_url(103)})
        cookie_names = {c["name"]: c["domain"] for c in await context.cookies()}

    assert out["origin"] == f"http://{owner(101)}.localhost:{hub.port}"
    assert out["own_files"].get("status") == 200 and "main.r" in out["own_files"]["body"], out["own_files"]
    # 1. none of her sign-ins is readable there, nor ever sent there
    assert "oxa" not in out["cookies"] and "jupyterhub" not in out["cookies"], out["cookies"]
    assert sent_to_workspaces, "no request to a workspace was seen"
    for url, cookie in sent_to_workspaces:  # only the workspace's own cookies, set by itself there
        names = {c.split("=")[0].strip() for c in cookie.split(";") if c.strip()}
        host_owner = url.split("//")[1].split(".localhost")[0]
        assert all(n == "_xsrf" or n.startswith(f"jupyterhub-user-{host_owner}-") for n in names), (
            url,
            names,
        )
    assert cookie_names.get("oxa") == "localhost" and cookie_names.get("jupyterhub-hub-login") == "localhost"
    # 2. the hub's paths on the workspace's host know nobody: no page, no API, no token
    assert out["here_home"].get("status") == 404 and "Attendance" not in out["here_home"]["body"]
    for name in ("here_user", "here_token"):  # refused, or sent elsewhere (unreadable)
        assert out[name].get("status") in (401, 403, 404) or "blocked" in out[name], (name, out[name])
    # the hub itself is another origin: nothing readable, nothing done
    for name in ("hub_home", "hub_user", "hub_token"):
        assert "blocked" in out[name], (name, out[name])
    assert out["hub_token_simple"].get("type") == "opaque" or "blocked" in out["hub_token_simple"]
    tokens_after = {t["id"] for t in hub.api("GET", f"/users/{GRACE}/tokens").json()["api_tokens"]}
    assert not any(
        "test" not in (t.get("note") or "") and t["id"] not in tokens_before and not t.get("oauth_client")
        for t in hub.api("GET", f"/users/{GRACE}/tokens").json()["api_tokens"]
    ), tokens_after - tokens_before  # her sign-ins to the two workspaces only, no token of her own
    # 3. another analysis's workspace, open in the same browser, is another origin too
    assert "blocked" in out["other_workspace"], out["other_workspace"]
    hub.stop_workspace(owner(101), "a-101")
    hub.stop_workspace(owner(103), "a-103")
