"""End to end in a real browser: Kinetic's old link → Kinetic sign-in → progress → the workspace."""

import time

from playwright.async_api import expect

from kinetic_auth.standin.seed import ADA, KATHERINE

from .browser import chromium
from .hub import owner


async def test_from_kinetic_link_to_a_working_workspace(hub, tmp_path):
    async with chromium() as browser:
        page = await browser.new_page()
        started = time.monotonic()
        await page.goto(f"{hub.url}/editor/#102")
        # not signed in: Kinetic's sign-in page, then back through the hub to the analysis
        await page.wait_for_url(f"{hub.standin.browser_url}/accounts/login*")
        await page.click(f'button[data-uuid="{ADA}"]')
        try:
            await page.wait_for_url("**/user/**/a-102/rstudio/**", timeout=90_000)
        except Exception:
            await page.screenshot(path="/tmp/browser-fail.png")
            raise AssertionError(f"stuck at {page.url}: {(await page.content())[:2000]}") from None
        await page.wait_for_selector("text=RStudio", timeout=30_000)
        elapsed = time.monotonic() - started
        print(f"\nsign-in -> workspace in the browser: {elapsed:.1f} s")
        await page.screenshot(path=str(tmp_path / "workspace.png"))
        # the home page lists the analyses with the workspace running
        await page.goto(f"{hub.url}/hub/home")
        row = page.locator('tr[data-analysis-id="102"] .workspace-status')
        assert "Running" in await row.inner_text()
    hub.stop_workspace(owner(102), "a-102")


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
    which offers the R kernel and asks nothing about news feeds (workspaces reach no internet).
    Opening main.r and running it in a console, accepting the kernel the dialog preselects, runs
    it in R on the seeded synthetic data (issue 6: a console on main.r preselected Python)."""
    import csv

    from kinetic_auth.standin.seed import GRACE

    from .hub import running_hub

    with running_hub(tmp_path, standin, rstudio=False) as hub:
        project = tmp_path / "workspaces" / "103" / "kinetic"
        async with chromium() as browser:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            await page.goto(f"{hub.url}/hub/analysis/103")
            await page.click(f'button[data-uuid="{GRACE}"]')
            await page.wait_for_url("**/user/**/a-103/lab**", timeout=90_000)
            await page.wait_for_selector(".jp-LauncherCard[title*='R']", timeout=60_000)
            await page.wait_for_selector("text=kinetic", timeout=30_000)  # the seeded project folder
            await page.wait_for_timeout(2000)
            assert await page.locator("text=notified about official Jupyter news").count() == 0

            # what running main.r on the seeded data must print and write
            data = sorted((project / "data").glob("*.csv"))
            assert data, f"no seeded data in {project / 'data'}"
            rows = [r for f in data for r in csv.DictReader(f.open())]
            courses = sorted({r["course"] for r in rows})
            written = project / "output" / "summary_by_course.csv"
            assert not written.exists()  # provisioning does not run the script: the console will

            try:
                # the file browser, as a person: double-click the project folder, then main.r
                listing = page.locator(".jp-DirListing-content")
                await listing.get_by_text("kinetic", exact=True).dblclick()
                await listing.get_by_text("main.r", exact=True).dblclick(timeout=30_000)
                editor = page.locator(".jp-FileEditor .cm-content")
                await editor.wait_for(timeout=30_000)
                await page.locator(".cm-line", has_text="cutoff_date =").wait_for(timeout=30_000)

                # a console for the editor, from the editor's context menu; the kernel dialog's
                # preselection is accepted as is
                await editor.click(button="right")
                await page.get_by_role("menuitem", name="Create Console for Editor", exact=True).click()
                dialog = page.locator(".jp-Dialog")
                await dialog.wait_for(timeout=30_000)
                preselected = (await dialog.locator("select option:checked").inner_text()).strip()
                assert preselected == "R", f"the kernel dialog for main.r preselects {preselected!r}, not R"
                await dialog.locator(".jp-Dialog-button.jp-mod-accept").click()
                await dialog.wait_for(state="detached", timeout=30_000)
                console = page.locator(".jp-CodeConsole")
                await console.wait_for(timeout=60_000)
                kernel_name = page.locator(".jp-ConsolePanel .jp-KernelName")  # the console's toolbar
                await expect(kernel_name).to_have_text("R", timeout=60_000)
                # the kernel has started and answered: R's banner, "R | Idle" in the status bar
                await console.locator(".jp-CodeConsole-banner", has_text="R version").wait_for(timeout=90_000)
                await page.locator("#jp-main-statusbar").get_by_text("R | Idle").wait_for(timeout=90_000)

                # Run → Run All Code, from the editor
                await editor.click()
                await page.get_by_role("menuitem", name="Run", exact=True).click()
                await page.get_by_role("menuitem", name="Run All Code", exact=True).click()
                outputs = console.locator(".jp-CodeConsole-content .jp-OutputArea-output")
                await outputs.filter(has_text="Wrote").wait_for(timeout=120_000)  # main.r's last line
                await page.screenshot(path=str(tmp_path / "ran-main-r.png"))
            except Exception:
                await page.screenshot(path=str(tmp_path / "failed.png"))
                raise

            await expect(kernel_name).to_have_text("R")
            shown = await outputs.all_inner_texts()
            text = "\n".join(shown)
            assert f"Read {len(rows)} responses from {len(data)} file(s)" in text, text
            assert all(c in text for c in courses), text
            errors = console.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
            assert await errors.count() == 0, await errors.all_inner_texts()
            assert written.exists()
            with written.open() as f:
                summary = {r["course"]: int(r["responses"]) for r in csv.DictReader(f)}
            assert summary == {c: sum(r["course"] == c for r in rows) for c in courses}
