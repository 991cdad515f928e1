"""Images for enclave runs, built without any registry.

* the R base image: ``debootstrap --variant=minbase`` + ``BASE_PACKAGES`` imported with
  ``podman import`` (``images/build_base.sh``); tagged by a hash of the script and its
  inputs, built once and reused while ``podman image exists`` says so. The workspace image
  (``kinetic_spawner.image``) is built ``FROM`` this same base, so the R and R packages a
  researcher tests with are exactly those the enclave runs.
* an analysis image per project content: ``FROM`` the base + the project (+ its renv.lock
  restored); tagged by a sha256 fingerprint of the files, so building the same content
  twice is a no-op.

No secret ever reaches a build: no ARG, no ENV from the service, no build secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import string
import tempfile
from pathlib import Path

from . import proc

HERE = Path(__file__).parent / "images"
BUILD_SCRIPT = HERE / "build_base.sh"
CONTAINERFILE = HERE / "Containerfile.analysis"
BASE_REPO = "localhost/kinetic-r-base"
ANALYSIS_REPO = "localhost/kinetic-analysis"
LIBRARY = "/opt/kinetic/library"
# Not part of the image: real data is mounted at run time, outputs are written at run time,
# and these are caches / VCS state that would only break the cache.
EXCLUDE_DIRS = {"data", "output", ".git", ".Rproj.user", ".cache"}
EXCLUDE_SUBPATHS = {("renv", "library"), ("renv", "staging")}
DEFAULT_CRAN = "https://cloud.r-project.org"
# The one package list of the shared R base (enclave runs and workspaces). Workspaces need the
# IR kernel, Python 3 (+ venv) for JupyterLab, and CA certificates so researchers can install
# packages over https; nothing else (no sudo, no container engine).
BASE_PACKAGES = ("r-base-core", "r-cran-irkernel", "python3", "python3-venv", "ca-certificates")

_locks: dict[str, asyncio.Lock] = {}


class ImageBuildError(RuntimeError):
    """An image could not be built; the message says which step and why."""


def apt_mirror(default: str = "http://deb.debian.org/debian") -> str:
    """The Debian mirror this host uses (so the enclave base comes from the same place)."""
    sources = [Path("/etc/apt/sources.list")] + sorted(Path("/etc/apt/sources.list.d").glob("*"))
    for f in sources:
        try:
            text = f.read_text()
        except OSError:
            continue
        for m in re.finditer(r"^(?:URIs:\s*|deb\s+(?:\[[^\]]*\]\s+)?)(\S+)", text, re.MULTILINE):
            if "security" not in m.group(1):
                return m.group(1)
    return default


def base_image_tag(suite: str = "bookworm", packages=BASE_PACKAGES, repo: str = BASE_REPO) -> str:
    """A new script or package list is a new version; the same inputs reuse the image."""
    h = hashlib.sha256(BUILD_SCRIPT.read_bytes())
    h.update(f"\0{suite}\0{' '.join(sorted(packages))}".encode())
    return f"{repo}:{suite}-{h.hexdigest()[:12]}"


async def _run(argv: list[str], timeout: float, extra_env: dict | None = None) -> tuple[int, str]:
    """Run a build step without blocking the loop; (returncode, combined output)."""
    try:
        rc, out, _ = await proc.run(
            argv, timeout, env={**_clean_env(), **(extra_env or {})}, merge_stderr=True
        )
    except proc.CommandTimeout:
        return -1, f"timed out after {timeout:.0f} s"
    return rc, out.decode("utf-8", "replace")


def _clean_env() -> dict[str, str]:
    """Builds get PATH, locale and podman's own settings only: the service's secrets stay
    out of build logs and layers."""
    keep = (
        "PATH",
        "HOME",
        "LANG",
        "LC_ALL",
        "TMPDIR",
        "XDG_RUNTIME_DIR",
        "CONTAINERS_CONF",
        "CONTAINERS_STORAGE_CONF",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    )
    return {k: os.environ[k] for k in keep if k in os.environ}


async def image_exists(tag: str, podman: str = "podman") -> bool:
    rc, _ = await _run([podman, "image", "exists", tag], 60)
    return rc == 0


async def ensure_base_image(
    *,
    suite: str = "bookworm",
    packages=BASE_PACKAGES,
    mirror: str | None = None,
    repo: str = BASE_REPO,
    podman: str = "podman",
    runtime: str = "runc",
    timeout: float = 3600,
) -> str:
    """Return the base image tag, building it first if this host does not have it."""
    tag = base_image_tag(suite, packages, repo)
    async with _locks.setdefault(tag, asyncio.Lock()):  # one build per tag per process
        if await image_exists(tag, podman):
            return tag
        argv = ["sh", str(BUILD_SCRIPT), tag, mirror or apt_mirror(), suite, *packages]
        env_runtime = {"KINETIC_PODMAN_RUNTIME": runtime}
        rc, out = await _run(argv, timeout, env_runtime)
        if rc != 0 or not await image_exists(tag, podman):
            raise ImageBuildError(f"building the R base image {tag} failed: {out.strip()[-2000:]}")
        return tag


def _included(rel: Path) -> bool:
    parts = rel.parts
    if parts and parts[0] in EXCLUDE_DIRS:
        return False
    return not any(parts[: len(s)] == s for s in EXCLUDE_SUBPATHS)


def project_files(project: Path) -> list[Path]:
    """Relative paths of the project files that go into the image, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(project, followlinks=False):
        rel_dir = Path(dirpath).relative_to(project)
        dirnames[:] = sorted(d for d in dirnames if _included(rel_dir / d))
        out += [rel_dir / f for f in filenames if _included(rel_dir / f)]
    return sorted(out)


def fingerprint(project: Path, base: str) -> str:
    """sha256 over the base tag and every included file's path, kind and content."""
    h = hashlib.sha256(f"base\0{base}\0".encode())
    for rel in project_files(project):
        p = project / rel
        h.update(f"{rel.as_posix()}\0".encode())
        if p.is_symlink():
            h.update(b"link\0" + os.readlink(p).encode() + b"\0")
        else:
            h.update(b"file\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def render_containerfile(base: str, fp: str, renv: bool, cran: str = DEFAULT_CRAN) -> str:
    renv_block = ""
    if renv:
        r = (
            f'options(repos = c(CRAN = "{cran}")); .libPaths("{LIBRARY}"); '
            f'if (!requireNamespace("renv", quietly = TRUE)) install.packages("renv"); '
            f'renv::restore(lockfile = "/home/editor/kinetic/renv.lock", '
            f'library = "{LIBRARY}", prompt = FALSE)'
        )
        renv_block = (
            f"RUN mkdir -p {LIBRARY} && echo 'kinetic: restoring renv.lock' && "
            f"R --no-save --no-restore -q -e '{r}'"
        )
    return string.Template(CONTAINERFILE.read_text()).substitute(
        base=base, fingerprint=fp, renv_block=renv_block
    )


def _make_context(project: Path, ctx: Path, containerfile: str) -> None:
    for rel in project_files(project):
        dst = ctx / "kinetic" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(project / rel, dst, follow_symlinks=False)
    (ctx / "kinetic").mkdir(exist_ok=True)
    (ctx / "Containerfile").write_text(containerfile)


async def build_analysis_image(
    code_dir: Path,
    base: str,
    *,
    podman: str = "podman",
    runtime: str = "runc",
    repo: str = ANALYSIS_REPO,
    cran: str = DEFAULT_CRAN,
    build_network: str = "host",
    timeout: float = 3600,
) -> str:
    """Build (or reuse) the image for the project at ``code_dir/kinetic``; return its tag.

    The network is opened only when renv.lock asks for packages, and only for the build:
    the run itself always has ``--network none``.
    """
    project = Path(code_dir) / "kinetic"
    if project.is_symlink() or not project.is_dir():
        raise ImageBuildError(f"the analysis project {project} is missing or not a directory")
    fp = await asyncio.to_thread(fingerprint, project, base)
    tag = f"{repo}:{fp[:24]}"
    async with _locks.setdefault(tag, asyncio.Lock()):
        if await image_exists(tag, podman):
            return tag
        renv = (project / "renv.lock").is_file()
        with tempfile.TemporaryDirectory(prefix="kinetic-build-") as tmp:
            await asyncio.to_thread(
                _make_context, project, Path(tmp), render_containerfile(base, fp, renv, cran)
            )
            argv = [
                podman,
                "--runtime",
                runtime,
                "build",
                "--pull=never",
                "--layers=false",
                f"--network={build_network if renv else 'none'}",
                "--ulimit",
                "nofile=4096:4096",
                "--ulimit",
                "nproc=1024:1024",
                "-f",
                str(Path(tmp) / "Containerfile"),
                "-t",
                tag,
                tmp,
            ]
            rc, out = await _run(argv, timeout)
        if rc != 0:
            what = (
                "restoring the R packages in renv.lock failed (no package repository "
                "reachable from the build host?)"
                if renv and "restoring renv.lock" in out
                else "building the analysis image failed"
            )
            raise ImageBuildError(f"{what}: {out.strip()[-1500:]}")
        return tag


async def remove_image(tag: str, podman: str = "podman") -> None:
    """Drop an analysis image once its run is over (W7: images were never cleaned up).
    Idempotent; an image still used by a container is left alone."""
    if tag.startswith(BASE_REPO + ":"):
        raise ValueError("the base image is shared by all runs; not removing it")
    await _run([podman, "rmi", "--ignore", tag], 120)
