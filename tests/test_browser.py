"""End to end in a real browser: Kinetic's old link → Kinetic sign-in → progress → the workspace."""
import time

from kinetic_auth.standin.seed import ADA, KATHERINE

from .browser import chromium


async def test_from_kinetic_link_to_a_working_workspace(hub, tmp_path):
    async with chromium() as browser:
        page = await browser.new_page()
        started = time.monotonic()
        await page.goto(f"{hub.url}/editor/#102")
        # not signed in: Kinetic's sign-in page, then back through the hub to the analysis
        await page.wait_for_url(f"{hub.standin.url}/accounts/login*")
        await page.click(f'button[data-uuid="{ADA}"]')
        try:
            await page.wait_for_url("**/user/**/a-102/rstudio/**", timeout=90_000)
        except Exception:
            await page.screenshot(path="/tmp/browser-fail.png")
            raise AssertionError(f"stuck at {page.url}: {(await page.content())[:2000]}")
        await page.wait_for_selector("text=RStudio", timeout=30_000)
        elapsed = time.monotonic() - started
        print(f"\nsign-in -> workspace in the browser: {elapsed:.1f} s")
        await page.screenshot(path=str(tmp_path / "workspace.png"))
        # the home page lists the analyses with the workspace running
        await page.goto(f"{hub.url}/hub/home")
        row = page.locator('tr[data-analysis-id="102"] .workspace-status')
        assert "Running" in await row.inner_text()
    hub.stop_workspace(ADA, "a-102")


async def test_hostile_kinetic_text_never_runs_as_script(hub):
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{hub.url}/hub/home")
        await page.click(f'button[data-uuid="{KATHERINE}"]')
        await page.wait_for_url(f"{hub.url}/hub/home")
        title = await page.locator('tr[data-analysis-id="105"] .analysis-title').inner_text()
        assert title.startswith("<img src=x")
        assert await page.evaluate("window.__pwned") is None


async def test_a_bad_editor_link_explains_itself(hub):
    async with chromium() as browser:
        page = await browser.new_page()
        await page.goto(f"{hub.url}/editor/#not-an-id")
        await page.wait_for_selector("text=does not name an analysis")


async def test_without_rstudio_the_workspace_is_jupyterlab_with_r(tmp_path, standin):
    """Where RStudio Server is absent (as on this machine), the researcher lands in JupyterLab,
    which offers the R kernel and asks nothing about news feeds (workspaces reach no internet)."""
    from kinetic_auth.standin.seed import GRACE

    from .hub import running_hub
    with running_hub(tmp_path, standin, rstudio=False) as hub:
        async with chromium() as browser:
            page = await browser.new_page()
            await page.goto(f"{hub.url}/hub/analysis/103")
            await page.click(f'button[data-uuid="{GRACE}"]')
            await page.wait_for_url("**/user/**/a-103/lab**", timeout=90_000)
            await page.wait_for_selector(".jp-LauncherCard[title*='R']", timeout=60_000)
            await page.wait_for_selector("text=kinetic", timeout=30_000)  # the seeded project folder
            await page.wait_for_timeout(2000)
            assert await page.locator("text=notified about official Jupyter news").count() == 0
