"""The whole path a newcomer walks in the demo, in Chromium against the real deployment config:
open the analysis, submit it, two reviewers approve, the mail arrives, the researcher downloads."""

import email
import hashlib
import io
import json
import re
import time
import zipfile

from kinetic_auth.standin.seed import ADA, MARIE, ROSALIND

from .browser import chromium
from .hub import owner


async def _sign_in(browser, hub, uuid, start_url):
    ctx = await browser.new_context(accept_downloads=True)
    page = await ctx.new_page()
    await page.goto(start_url)
    await page.click(f'button[data-uuid="{uuid}"]')
    return page


async def _wait_for_state(page, url, states, timeout=300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await page.goto(url)
        state = (await page.locator("#state").inner_text()).strip()
        if state in states:
            return state
        assert not state.startswith("failed") and state not in ("rejected", "withdrawn"), (
            f"{state}: {await page.locator('body').inner_text()}"
        )
        await page.wait_for_timeout(1000)
    raise TimeoutError(f"run at {url} never reached {states}")


async def test_submit_review_twice_mail_and_download(hub):
    ada_http = hub.browser_session(ADA)
    assert hub.open_analysis(ada_http, 102).status_code == 200  # the seeded blank project
    async with chromium() as browser:
        ada = await _sign_in(browser, hub, ADA, f"{hub.url}/hub/home")
        await ada.wait_for_url(f"{hub.url}/hub/home")
        await ada.click('tr[data-analysis-id="102"] .submit-analysis')
        await ada.wait_for_selector("#submit-form")
        assert await ada.locator("#analysis-select").input_value() == "102"
        await ada.fill('#submit-form input[name="message"]', "first run on real data")
        await ada.click("#submit-form button[type=submit]")
        await ada.wait_for_url("**/services/enclave/runs/*")
        run_url = ada.url
        run_id = run_url.rstrip("/").rsplit("/", 1)[1]
        await _wait_for_state(ada, run_url, {"in_review"})
        assert "0 of 2" in await ada.locator("#review-status").inner_text()

        for reviewer in (ROSALIND, MARIE):
            page = await _sign_in(browser, hub, reviewer, f"{hub.url}/services/enclave/review/")
            await page.wait_for_url("**/services/enclave/review/")
            await page.click(f'a[href$="review/{run_id}"]')
            await page.wait_for_selector("#review-form")
            assert "summary" in (await page.locator("body").inner_text()).lower()  # outputs previewed
            await page.click("#approve")
            await page.wait_for_load_state()
        assert await _wait_for_state(ada, run_url, {"released"}) == "released"

        # the researcher's mail: a link to the run's page, and no bearer link
        deadline = time.monotonic() + 30
        mails = []
        while not mails and time.monotonic() < deadline:
            mails = [email.message_from_bytes(p.read_bytes()) for p in (hub.state_dir / "mail").glob("*.eml")]
            mails = [m for m in mails if "ada.lovelace@example.org" in m["To"] and run_id in str(m)]
            time.sleep(0.5)
        assert mails, "no release mail for Ada"
        body = (
            mails[-1].get_payload(decode=True).decode()
            if not mails[-1].is_multipart()
            else mails[-1].get_payload(0).get_payload(decode=True).decode()
        )
        assert f"/services/enclave/runs/{run_id}" in body
        assert not re.search(r"token=|[?&]sig=|_xsrf", body)

        async with ada.expect_download() as dl:
            await ada.click("#download")
        data = open(await (await dl.value).path(), "rb").read()
    z = zipfile.ZipFile(io.BytesIO(data))
    manifest = json.loads(z.read("MANIFEST.json"))
    files = manifest.get("files", manifest)
    assert files, manifest
    for name, digest in files.items():
        member = name if name in z.namelist() else f"output/{name}"
        assert hashlib.sha256(z.read(member)).hexdigest() == (
            digest if isinstance(digest, str) else digest["sha256"]
        )
    hub.stop_workspace(owner(102), "a-102")
