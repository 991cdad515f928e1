"""Enclave images: the R base (debootstrap + podman import, cached) and per-content analysis
images (fingerprint-tagged, a second build is a no-op, renv failures reported clearly)."""

import asyncio
import json
import subprocess
import time

import pytest

from enclave_service.images import (
    ImageBuildError,
    apt_mirror,
    base_image_tag,
    build_analysis_image,
    ensure_base_image,
    fingerprint,
    image_exists,
    remove_image,
)

from .conftest import needs_podman

pytestmark = needs_podman
SECRET = "kinetic-enclave-key-images-5b1e0c"


def podman_json(*args):
    return json.loads(subprocess.run(["podman", *args], capture_output=True, text=True, check=True).stdout)


def make_project(tmp_path, name="home", main="cat('hello from the image\\n')\n", extra=None):
    home = tmp_path / name
    project = home / "kinetic"
    (project / "data").mkdir(parents=True)
    (project / "main.r").write_text(main)
    (project / "data" / "synthetic.csv").write_text("x\n1\n")
    for rel, text in (extra or {}).items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(text)
    return home


async def test_base_image_is_cached_and_runs_r_unprivileged(r_base_image):
    assert r_base_image == base_image_tag()
    t0 = time.monotonic()
    assert await ensure_base_image() == r_base_image  # exists: no rebuild
    assert time.monotonic() - t0 < 5
    cfg = podman_json("image", "inspect", r_base_image)[0]["Config"]
    assert cfg["User"] == "1010:1010"
    assert not any("KEY" in e or "SECRET" in e or "TOKEN" in e for e in cfg.get("Env", []))
    out = subprocess.run(
        [
            "podman",
            "--runtime",
            "runc",
            "run",
            "--rm",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=512:512",
            r_base_image,
            "R",
            "--version",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "R version 4" in out.stdout


def test_fingerprint_follows_code_not_data(tmp_path):
    a = make_project(tmp_path, "a") / "kinetic"
    b = make_project(tmp_path, "b") / "kinetic"
    assert fingerprint(a, "base:1") == fingerprint(b, "base:1")
    (b / "data" / "real.csv").write_text("secret rows\n")  # data never enters images
    (b / "output").mkdir()
    (b / "output" / "old.csv").write_text("x\n")
    assert fingerprint(a, "base:1") == fingerprint(b, "base:1")
    assert fingerprint(a, "base:1") != fingerprint(a, "base:2")
    (b / "main.r").write_text("cat('changed')\n")
    assert fingerprint(a, "base:1") != fingerprint(b, "base:1")


async def test_analysis_image_built_once_per_content(r_base_image, tmp_path, monkeypatch):
    monkeypatch.setenv("KINETIC_ENCLAVE_KEY", SECRET)
    home = make_project(tmp_path, extra={"R/helpers.r": "f <- function() 1\n"})
    tag = await build_analysis_image(home, r_base_image)
    assert tag.startswith("localhost/kinetic-analysis:")
    first_id = podman_json("image", "inspect", tag)[0]["Id"]
    t0 = time.monotonic()
    assert await build_analysis_image(home, r_base_image) == tag  # same content: no-op
    assert time.monotonic() - t0 < 5
    assert podman_json("image", "inspect", tag)[0]["Id"] == first_id
    info = podman_json("image", "inspect", tag)[0]
    assert info["Config"]["User"] == "1010:1010"
    assert SECRET not in json.dumps(info)
    history = subprocess.run(["podman", "history", "--no-trunc", tag], capture_output=True, text=True)
    assert SECRET not in history.stdout
    listing = subprocess.run(
        [
            "podman",
            "--runtime",
            "runc",
            "run",
            "--rm",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=512:512",
            tag,
            "sh",
            "-c",
            "cat /home/editor/kinetic/main.r; ls /home/editor/kinetic; ls /home/editor/kinetic/R",
        ],
        capture_output=True,
        text=True,
    )
    assert "hello from the image" in listing.stdout
    assert "helpers.r" in listing.stdout and "data" not in listing.stdout.split()
    (home / "kinetic" / "main.r").write_text("cat('v2')\n")
    tag2 = await build_analysis_image(home, r_base_image)
    assert tag2 != tag and await image_exists(tag2)
    for t in (tag, tag2, tag2):  # removal is idempotent
        await remove_image(t)
    assert not await image_exists(tag) and not await image_exists(tag2)
    assert await image_exists(r_base_image)


async def test_renv_restore_failure_is_reported_clearly(r_base_image, tmp_path):
    lock = {
        "R": {"Version": "4.2.2", "Repositories": [{"Name": "CRAN", "URL": "http://127.0.0.1:9"}]},
        "Packages": {
            "here": {"Package": "here", "Version": "1.0.1", "Source": "Repository", "Repository": "CRAN"}
        },
    }
    home = make_project(tmp_path, extra={"renv.lock": json.dumps(lock)})
    with pytest.raises(ImageBuildError) as e:
        # No CRAN is reachable here: point at a closed local port so it fails at once.
        await asyncio.wait_for(build_analysis_image(home, r_base_image, cran="http://127.0.0.1:9"), 600)
    assert "restoring the R packages in renv.lock failed" in str(e.value)
    assert "there is no package called" in str(e.value)  # the R error is passed on


async def test_missing_project_is_a_clear_error(tmp_path):
    with pytest.raises(ImageBuildError, match="missing"):
        await build_analysis_image(tmp_path / "nothing", "localhost/whatever:1")


def test_apt_mirror_is_read_from_sources():
    assert apt_mirror().startswith("http")
