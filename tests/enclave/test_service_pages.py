"""The enclave's pages in headless Chromium: the researcher's run page (timeline), the reviewers'
queue and review page (CSV preview escaped; the review form works with the hub's XSRF token).
No answer of the service can be framed by another page."""

import pytest
import requests

from enclave_service.archive import create_archive_sync
from kinetic_auth.standin.seed import ADA, ROSALIND

from .service_fixtures import *  # noqa: F401,F403
from .service_fixtures import make_home, wait_for_state

XSS = "<script>window.__xss = 1</script>"
MAIN = f"""cutoff_date = "2026-01-15"
d <- read.csv("data/responses.csv")
agg <- aggregate(quiz_score ~ course, data = d, FUN = mean)
agg$note <- "{XSS}"
write.csv(agg, "output/table.csv", row.names = FALSE)
"""

BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=BROWSER_ARGS, headless=True)
        yield b
        b.close()


def login(browser, hub, uuid):
    hub.user(uuid)  # the user exists and holds their Kinetic sign-in
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(f"{hub.url}/hub/login")
    page.fill("input[name=username]", uuid)
    page.fill("input[name=password]", "any")
    page.click("[type=submit]")
    page.wait_for_url("**/services/enclave/**")
    hub.set_auth_state(uuid)  # the test authenticator does not keep it; Kinetic's does
    return ctx, page


@pytest.fixture(scope="module")
def review_run(enclave_hub, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pages")
    home = make_home(tmp / "home", MAIN)
    archive = create_archive_sync(home, tmp / "a.tar.zst").path
    r = enclave_hub.submit_archive(ADA, 102, archive, message="a table with a <b>tag</b>")
    assert r.status_code == 201, r.text
    run = wait_for_state(
        enclave_hub,
        ADA,
        r.json()["id"],
        {"in_review", "failed_built", "failed_ran", "failed_outputs_checked", "failed_code_checked"},
    )
    assert run["state"] == "in_review", run["failure"]
    return run


def test_researcher_run_page_shows_the_timeline(browser, enclave_hub, review_run):
    ctx, page = login(browser, enclave_hub, ADA)
    try:
        page.goto(f"{enclave_hub.service_url}runs/{review_run['id']}")
        page.wait_for_selector("#timeline")
        assert page.inner_text("#state") == "in_review"
        text = page.inner_text("#timeline")
        for word in ("Submitted", "Unpacked", "Code checks", "finished", "Output checks", "approval"):
            assert word in text, word
        # the message is shown as text, not markup
        assert "a table with a <b>tag</b>" in page.inner_text("body")
        page.goto(enclave_hub.service_url)
        assert review_run["id"] in page.inner_text("#runs")
        # the review queue is for reviewers only
        page.goto(f"{enclave_hub.service_url}review/")
        assert "for output reviewers" in page.inner_text("body")
    finally:
        ctx.close()


def test_reviewer_queue_and_escaped_csv_preview(browser, enclave_hub, review_run):
    ctx, page = login(browser, enclave_hub, ROSALIND)
    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    try:
        page.goto(f"{enclave_hub.service_url}review/")
        page.wait_for_selector("#queue")
        page.click(f"a:text('{review_run['id']}')")
        page.wait_for_selector("table.preview")
        cells = page.locator("table.preview td").all_inner_texts()
        assert XSS in cells  # shown as text …
        assert page.locator("table.preview script").count() == 0  # … never as markup
        assert page.evaluate("window.__xss") is None
        assert not dialogs
        page.fill("textarea[name=comment]", "looks aggregate")
        page.click("#approve")
        page.wait_for_selector("#review-status")
        assert "1 of 2" in page.inner_text("#review-status")
        assert page.locator("#review-form").count() == 0  # one decision per reviewer
        assert enclave_hub.db_rows(
            "select reviewer, decision from reviews where run_id = ?", review_run["id"]
        ) == [(ROSALIND, "approve")]
    finally:
        ctx.close()


def test_no_answer_of_the_enclave_can_be_framed(enclave_hub, review_run):
    """Every kind of answer — pages, API, downloads, redirects to sign in, refusals, the OAuth
    callback, tornado's own 404 — tells browsers never to show it inside another page: a page a
    researcher's code serves (same origin as the enclave today) cannot frame a reviewer's review
    page and trick the approving click."""
    run_id = review_run["id"]
    url = enclave_hub.service_url
    answers = [
        requests.get(url, allow_redirects=False),  # not signed in: off to the hub's OAuth
        requests.get(url + "api/runs"),
        requests.get(url + "oauth_callback"),
        requests.get(url + "no/such/page"),
        enclave_hub.metrics(),
        enclave_hub.metrics(token=""),
    ]
    for uuid, method, path in [
        (ADA, "GET", ""),
        (ADA, "GET", f"runs/{run_id}"),
        (ADA, "GET", "runs/no-such-run"),
        (ADA, "POST", "runs/no-such-run/withdraw"),
        (ADA, "GET", "review/"),
        (ROSALIND, "GET", "review/"),
        (ROSALIND, "GET", f"review/{run_id}"),
        (ROSALIND, "POST", "review/no-such-run"),
        (ADA, "GET", "api/runs"),
        (ADA, "GET", f"api/runs/{run_id}"),
        (ADA, "GET", f"api/runs/{run_id}/review"),
        (ADA, "POST", f"api/runs/{run_id}/review"),
        (ADA, "POST", "api/runs/no-such-run/withdraw"),
        (ADA, "GET", f"api/runs/{run_id}/download"),
        (ADA, "GET", "no/such/page"),
    ]:
        answers.append(enclave_hub.call(uuid, method, path, allow_redirects=False))
    assert {r.status_code for r in answers} >= {200, 302, 403, 404, 405}
    for r in answers:
        where = (r.request.method, r.request.url, r.status_code)
        assert r.headers.get("Content-Security-Policy") == "frame-ancestors 'none'", where
        assert r.headers.get("X-Frame-Options") == "DENY", where
