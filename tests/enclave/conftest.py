import asyncio
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import pytest_asyncio

# ======================================================================================
# Runner / image fixtures (enclave runner engineer). Other fixtures go in their own group.
# ======================================================================================
from enclave_service.runners import RunJob, RunLimits

TEST_IMAGE = "localhost/kinetic-test-busybox:2"
BUSYBOX = "/bin/busybox"


def _podman_ok() -> bool:
    return shutil.which("podman") is not None and shutil.which("runc") is not None


needs_podman = pytest.mark.skipif(not _podman_ok(), reason="podman and runc are required")


@pytest.fixture(scope="session")
def busybox_image():
    """A ~2 MB image (static busybox + an `editor` user) for tests that need no R: imported
    from a directory, so no registry and seconds to make."""
    if not _podman_ok() or not Path(BUSYBOX).exists():
        pytest.skip("podman, runc and busybox-static are required")
    if subprocess.run(["podman", "image", "exists", TEST_IMAGE]).returncode == 0:
        return TEST_IMAGE
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for d in ("bin", "etc", "tmp", "home/editor/kinetic", "proc", "sys", "dev"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "tmp").chmod(0o1777)  # podman copies the image's /tmp mode onto the tmpfs
        shutil.copy2(BUSYBOX, root / "bin/busybox")
        applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True).stdout.split()
        for a in applets:
            if a != "busybox":
                (root / "bin" / a).symlink_to("busybox")
        (root / "etc/passwd").write_text(
            "root:x:0:0::/root:/bin/sh\neditor:x:1010:1010::/home/editor:/bin/sh\n"
        )
        (root / "etc/group").write_text("root:x:0:\neditor:x:1010:\n")
        tar = subprocess.Popen(["tar", "-C", tmp, "--numeric-owner", "-cf", "-", "."], stdout=subprocess.PIPE)
        subprocess.run(
            ["podman", "import", "--change", "USER 1010:1010", "--change", "ENV PATH=/bin", "-", TEST_IMAGE],
            stdin=tar.stdout,
            check=True,
            capture_output=True,
        )
        tar.wait()
    return TEST_IMAGE


@pytest.fixture(scope="session")
def r_base_image():
    """The real enclave base image (debootstrap + r-base-core). Built once per host; the
    build time is printed (run pytest with -s to see it)."""
    if not _podman_ok() or not shutil.which("debootstrap"):
        pytest.skip("podman, runc and debootstrap are required")
    from enclave_service.images import ensure_base_image

    t0 = time.monotonic()
    tag = asyncio.run(ensure_base_image())
    print(f"\n[r_base_image] {tag} ready in {time.monotonic() - t0:.1f} s")
    return tag


@pytest.fixture
def make_job(tmp_path):
    """make_job(image, script, kind='R'|'sh', **limits) -> RunJob with a staged analysis home
    (code/kinetic/main.r or main.sh), a data dir with a CSV, and an empty output dir."""
    counter = iter(range(1000))

    def make(image, script, kind="R", run_id=None, data=None, **limits):
        n = next(counter)
        base = tmp_path / f"job{n}"
        project = base / "code" / "kinetic"
        project.mkdir(parents=True)
        (project / "data").mkdir()
        (project / "data" / "synthetic.csv").write_text("x\n999\n")  # shadowed by real data
        data_dir = base / "data"
        data_dir.mkdir()
        for name, text in (data or {"input.csv": "x\n1\n2\n3\n"}).items():
            (data_dir / name).write_text(text)
        if kind == "R":
            (project / "main.r").write_text(script)
            command = ["R", "--no-save", "--no-restore", "-f", "main.r"]
        else:
            (project / "main.sh").write_text(script)
            command = ["/bin/sh", "main.sh"]
        rid = run_id or f"t{int(time.time() * 1000) % 10**9}-{n}"
        return RunJob(
            run_id=rid,
            image=image,
            code_dir=base / "code",
            data_dir=data_dir,
            output_dir=base / "output",
            limits=RunLimits(**limits),
            command=command,
        )

    return make


@pytest_asyncio.fixture(loop_scope="function")
async def podman_runner():
    """A PodmanRunner that removes every container it was asked about at teardown."""
    from enclave_service.runners.podman import PodmanRunner

    runner = PodmanRunner(stop_grace_seconds=1)
    jobs = []
    orig = runner.prepare

    async def tracking_prepare(job):
        jobs.append(job)
        return await orig(job)

    runner.prepare = tracking_prepare
    yield runner
    for job in jobs:
        await runner.cleanup(job)


# ======================= end of runner / image fixtures ===============================
