"""The workspace image, built once per test session (real podman), for any test that needs it.

Import the fixture into a conftest: ``from .image_fixtures import workspace_image_fixture  # noqa: F401``
(registered as ``workspace_image``; tests take ``workspace_image``).
The first build on a machine takes about a minute (plus the shared R base if it is missing);
afterwards the fixture costs a ``podman image exists``.
"""

import asyncio
import shutil
import subprocess
import time

import pytest

PODMAN_RUN = [
    "podman",
    "--runtime",
    "runc",
    "run",
    "--rm",
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=1024:1024",
]


def podman_ok() -> bool:
    return shutil.which("podman") is not None and shutil.which("runc") is not None


def run_in(image: str, *cmd: str, args=(), input=None, timeout=120) -> subprocess.CompletedProcess:
    """``podman run --rm [args] image cmd...`` with the runtime and ulimits this machine needs."""
    return subprocess.run(
        [*PODMAN_RUN, *args, image, *cmd],
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(scope="session", name="workspace_image")
def workspace_image_fixture() -> str:
    """The tag of the real workspace image (built if missing; the time is printed with -s)."""
    if not podman_ok() or not shutil.which("debootstrap"):
        pytest.skip("podman, runc and debootstrap are required")
    from kinetic_spawner.image import ensure_workspace_image

    t0 = time.monotonic()
    tag = asyncio.run(ensure_workspace_image(on_progress=lambda m: print(f"\n[workspace_image] {m}")))
    print(f"\n[workspace_image] {tag} ready in {time.monotonic() - t0:.1f} s")
    return tag
