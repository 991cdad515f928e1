"""provision.sh against the real Kinetic stand-in, run by the same function the spawner uses."""

import asyncio
import datetime
import os
import subprocess
from pathlib import Path

import pytest
import requests

from kinetic_auth.standin.seed import ADA
from kinetic_spawner.backends import BackendError, ProvisionInputs
from kinetic_spawner.fetch_data import file_names
from kinetic_spawner.provisioning import run_provision

from .support import free_port


@pytest.fixture(scope="module")
def api_key(standin):
    s = requests.Session()
    standin.sign_in(s, ADA)
    return s.get(f"{standin.browser_url}/api/v1/researcher/analysis/101").json()["api_key"]


def make_home(tmp_path) -> Path:
    home = tmp_path / "101"
    home.mkdir(mode=0o755)
    return home


def inputs(standin_url, key, cutoff=""):
    return ProvisionInputs(analysis_id="101", api_key=key, kinetic_url=standin_url, cutoff_date=cutoff)


async def test_first_run_seeds_then_second_run_keeps_the_researchers_work(standin, api_key, tmp_path):
    home = make_home(tmp_path)
    steps = []
    result = await run_provision(str(home), inputs(standin.url, api_key), steps.append)
    today = datetime.date.today().isoformat()

    assert result.seeded
    assert steps[0].startswith("seeded") and steps[-1] == "done"
    assert "synthetic data ready" in steps
    main = home / "kinetic" / "main.r"
    assert f'cutoff_date = "{today}"' in main.read_text().splitlines()
    assert (home / "kinetic" / "README.md").exists()
    assert (home / ".Renviron").read_text() == f"ANALYSIS_API_KEY={api_key}\n"
    assert oct(home.stat().st_mode & 0o777) == "0o700"
    csvs = sorted((home / "kinetic" / "data").glob("*.csv"))
    assert [p.name for p in csvs] == ["responses.csv"]
    text = csvs[0].read_text()
    assert text.startswith("student_id,course,week,minutes_reading,quiz_score\n")
    assert "synthetic-0001" in text
    # the blank project runs as it is, with base R only
    r = subprocess.run(["Rscript", "kinetic/main.r"], cwd=home, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    summary = (home / "kinetic" / "output" / "summary_by_course.csv").read_text()
    assert summary.splitlines()[0] == '"course","responses","minutes_reading","quiz_score"'

    # the researcher works: edits main.r (a different cutoff), adds a file, adds R settings
    edited = main.read_text().replace(f'cutoff_date = "{today}"', 'cutoff_date = "2025-06-30"')
    edited += "\n# my analysis\n"
    main.write_text(edited)
    (home / "kinetic" / "my_notes.r").write_text("x <- 1\n")
    (home / "kinetic" / "data" / "my_lookup.csv").write_text("course,label\nbiology,Bio\n")
    (home / ".Renviron").write_text("R_LIBS_USER=~/R\nANALYSIS_API_KEY=old-key\nTZ=UTC\n")

    steps = []
    result = await run_provision(str(home), inputs(standin.url, api_key, cutoff="2020-01-01"), steps.append)
    assert not result.seeded
    assert steps[0] == "kept the existing project"
    assert "downloading synthetic data (cutoff 2025-06-30)" in steps  # the project's cutoff is used
    assert main.read_text() == edited
    assert (home / "kinetic" / "my_notes.r").read_text() == "x <- 1\n"
    assert (home / "kinetic" / "data" / "my_lookup.csv").exists()
    assert (home / ".Renviron").read_text().splitlines() == [
        "R_LIBS_USER=~/R",
        "TZ=UTC",
        f"ANALYSIS_API_KEY={api_key}",
    ]
    # data refreshed for the project's cutoff, nothing half-written left behind
    assert (home / "kinetic" / "data" / "responses.csv").read_text().startswith("student_id,")
    assert not list((home / "kinetic" / "data").glob(".*part"))
    assert (home / "kinetic" / "output" / "summary_by_course.csv").exists()


async def test_kinetic_unreachable_is_a_clear_error_and_destroys_nothing(api_key, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"
    # a fresh home: nothing to work with, so provisioning fails and says why
    home = make_home(tmp_path)
    with pytest.raises(BackendError) as e:
        await run_provision(str(home), inputs(dead, api_key), timeout=60)
    msg = str(e.value)
    assert "could not ask Kinetic" in msg and "could not download the synthetic data" in msg
    assert api_key not in msg
    assert (home / "kinetic" / "main.r").exists()  # the project itself was still seeded

    # a home with a project and data from last time: kept as it was, the start goes on with a warning
    (home / "kinetic" / "data" / "responses.csv").write_text("student_id,course\nsynthetic-0001,biology\n")
    before = {p: p.read_bytes() for p in (home / "kinetic").rglob("*") if p.is_file()}
    steps = []
    await run_provision(str(home), inputs(dead, api_key), steps.append, timeout=60)
    assert any(s.startswith("WARNING") for s in steps)
    assert {p: p.read_bytes() for p in (home / "kinetic").rglob("*") if p.is_file()} == before


async def test_bad_inputs_are_refused_before_anything_is_written(tmp_path):
    home = make_home(tmp_path)
    with pytest.raises(BackendError, match="ANALYSIS_API_KEY has unexpected characters"):
        await run_provision(str(home), inputs("http://127.0.0.1:9", "a\nEVIL=1"))
    assert list(home.iterdir()) == []


async def test_the_api_key_never_appears_in_any_process_arguments(standin, api_key, tmp_path):
    home = make_home(tmp_path)
    seen = set()
    task = asyncio.create_task(run_provision(str(home), inputs(standin.url, api_key)))
    while not task.done():
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    seen.add(Path(f"/proc/{pid}/cmdline").read_bytes())
                except OSError:
                    pass
        await asyncio.sleep(0.01)
    await task
    assert any(b"provision.sh" in c for c in seen)  # we did watch the script run
    assert any(b"kinetic-fetch-data" in c for c in seen)  # and the download
    assert not [c for c in seen if api_key.encode() in c]


def test_data_file_names_are_stable_and_unique():
    assert file_names(
        [
            "http://k/data/1/synthetic/2026-01-01/abc/responses.csv",
            "http://k/other/responses.csv",
            "http://k/x/extra",
        ]
    ) == ["responses.csv", "responses-2.csv", "extra.csv"]
