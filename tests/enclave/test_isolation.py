"""Each hardening flag of the enclave container, proven by a run that tries to break it
(real podman + runc). R-based runs use the real enclave base image; the rest use a tiny
busybox image so the suite stays quick."""

import http.server
import json
import secrets
import subprocess
import threading
import time

import pytest

from enclave_service.container import ContainerSpec, stage_job
from enclave_service.runners import JobState, RunResult
from enclave_service.runners.podman import PodmanRunner

from .conftest import needs_podman

pytestmark = needs_podman


async def run(runner, job) -> RunResult:
    await runner.prepare(job)
    await runner.execute(job)
    return await runner.wait(job)


@pytest.fixture
def host_http_server():
    """An HTTP server on the host's loopback that counts the requests it gets."""
    hits = []

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"reachable")

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1], hits
    srv.shutdown()


async def test_network_is_unreachable(r_base_image, make_job, podman_runner, host_http_server):
    port, hits = host_http_server
    import urllib.request

    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/sanity").read() == b"reachable"
    hits.clear()
    job = make_job(
        r_base_image,
        f"""
        r1 <- try(readLines(url("http://127.0.0.1:{port}/from-run")), silent = TRUE)
        r2 <- try(download.file("http://127.0.0.1:{port}/dl", tempfile(), quiet = TRUE), silent = TRUE)
        r3 <- try(readLines(url("http://169.254.169.254/latest/meta-data/")), silent = TRUE)
        r4 <- try(download.file("http://deb.debian.org/debian/", tempfile(), quiet = TRUE), silent = TRUE)
        failed <- sapply(list(r1, r2, r3, r4), function(r) inherits(r, "try-error"))
        print(failed)
        if (!all(failed)) quit(status = 9)
    """,
    )
    res = await run(podman_runner, job)
    assert res.succeeded, res.logs
    assert hits == []


async def test_writes_outside_output_fail(busybox_image, make_job, podman_runner):
    job = make_job(
        busybox_image,
        r"""
        try() { if sh -c "$2" 2>/dev/null; then echo "$1 ok"; else echo "$1 denied"; fi; }
        try code    'echo x > /home/editor/kinetic/main.sh'
        try newcode 'touch /home/editor/kinetic/new.r'
        try data    'touch /home/editor/kinetic/data/x'
        try home    'touch /home/editor/x'
        try root    'touch /x'
        try etc     'echo "evil:x:0:0::/:/bin/sh" >> /etc/passwd'
        try run     'mkdir -p /run/x'
        try tmpexec 'printf "#!/bin/sh\necho pwned\n" > /tmp/s && chmod +x /tmp/s && /tmp/s'
        try tmpwrite 'echo fine > /tmp/scratch'
        try output  'echo fine > /home/editor/kinetic/output/ok.txt'
    """,
        kind="sh",
    )
    original = (job.code_dir / "kinetic/main.sh").read_text()
    res = await run(podman_runner, job)
    assert res.exit_code == 0, res.logs
    verdicts = dict(line.split() for line in res.logs.split("\n") if line.strip())
    denied = ["code", "newcode", "data", "home", "root", "etc", "run", "tmpexec"]
    assert {k: verdicts[k] for k in denied} == {k: "denied" for k in denied}, res.logs
    assert verdicts["tmpwrite"] == "ok" and verdicts["output"] == "ok"
    assert (job.code_dir / "kinetic/main.sh").read_text() == original
    assert not (job.code_dir / "kinetic/new.r").exists()
    assert (job.output_dir / "ok.txt").read_text() == "fine\n"


async def test_file_size_limit(busybox_image, make_job, podman_runner):
    job = make_job(
        busybox_image, "dd if=/dev/zero of=output/big bs=1M count=20; echo dd=$?", kind="sh", file_size_mb=4
    )
    res = await run(podman_runner, job)
    assert (job.output_dir / "big").stat().st_size <= 4 * 1024 * 1024
    assert "dd=0" not in res.logs  # dd was stopped by the limit, it did not finish


async def test_fork_bomb_is_contained(busybox_image, make_job, podman_runner):
    job = make_job(
        busybox_image, "bomb() { bomb | bomb & }; bomb; sleep 60", kind="sh", pids=48, wall_seconds=6
    )
    await podman_runner.prepare(job)
    await podman_runner.execute(job)
    t0 = time.monotonic()
    peak = 0
    while time.monotonic() - t0 < 4:
        out = subprocess.run(
            ["podman", "stats", "--no-stream", "--format", "json", job.container_name],
            capture_output=True,
            text=True,
        ).stdout
        try:
            peak = max(peak, int(json.loads(out)[0]["pids"]))
        except (ValueError, KeyError, IndexError):
            pass
        time.sleep(0.5)
    res = await podman_runner.wait(job)
    assert 0 < peak <= 48
    assert res.timed_out and not res.succeeded
    assert time.monotonic() - t0 < 30
    assert subprocess.run(["true"]).returncode == 0  # the host can still fork
    assert await podman_runner.get_status(job) is JobState.EXITED


async def test_memory_hog_is_killed_and_reported(r_base_image, make_job, podman_runner):
    job = make_job(r_base_image, "x <- rep(1.5, 2e8); print(sum(x))", memory_mb=256)
    res = await run(podman_runner, job)
    assert res.oom_killed, (res, res.logs)
    assert not res.succeeded
    assert res.failure_reason() == "out of memory (limit 256 MB)"


async def test_sleeper_is_stopped_at_wall_clock_limit(busybox_image, make_job, podman_runner):
    job = make_job(busybox_image, "echo start; sleep 120", kind="sh", wall_seconds=2)
    t0 = time.monotonic()
    res = await run(podman_runner, job)
    assert res.timed_out and not res.succeeded and not res.oom_killed
    assert res.failure_reason() == "stopped at the time limit of 2 s"
    assert time.monotonic() - t0 < 20
    assert "start" in res.logs


async def test_runs_unprivileged(r_base_image, make_job, podman_runner):
    job = make_job(
        r_base_image,
        """
        writeLines(system("id -u", intern = TRUE), "output/uid.txt")
        st <- readLines("/proc/self/status")
        writeLines(grep("^(CapEff|CapBnd|NoNewPrivs)", st, value = TRUE), "output/status.txt")
    """,
    )
    res = await run(podman_runner, job)
    assert res.succeeded, res.logs
    assert (job.output_dir / "uid.txt").read_text().strip() == "1010"
    status = dict(line.split(":\t") for line in (job.output_dir / "status.txt").read_text().splitlines())
    assert status == {"CapEff": "0000000000000000", "CapBnd": "0000000000000000", "NoNewPrivs": "1"}


async def test_enclave_key_never_enters_the_container(r_base_image, make_job, podman_runner, monkeypatch):
    secret = "kinetic-enclave-key-" + secrets.token_hex(16)
    monkeypatch.setenv("KINETIC_ENCLAVE_KEY", secret)
    job = make_job(r_base_image, "", kind="sh")
    (job.data_dir.parent / "enclave.key").write_text(secret)  # next to the data dir
    half = len(secret) // 2
    # The script builds the needle from two halves, so the script itself never matches.
    (job.code_dir / "kinetic/main.sh").write_text(f"""
        A='{secret[:half]}'; B='{secret[half:]}'
        env > output/env.txt
        X="--exclude-dir=proc --exclude-dir=sys --exclude-dir=dev"
        grep -rlsF $X "$A$B" / > output/hits.txt
        echo "grep=$?"
        grep -rlsF $X "$A" / > output/control.txt   # positive control: the half is in main.sh
    """)
    res = await run(podman_runner, job)
    # 1 = nothing found; 2 = nothing found and some files unreadable to uid 1010
    assert "grep=1" in res.logs or "grep=2" in res.logs, res.logs
    assert "/home/editor/kinetic/main.sh" in (job.output_dir / "control.txt").read_text()
    assert secret not in (job.output_dir / "env.txt").read_text()
    assert (job.output_dir / "hits.txt").read_text() == ""
    inspect = subprocess.run(
        ["podman", "container", "inspect", job.container_name], capture_output=True, text=True
    ).stdout
    assert secret not in inspect and "KINETIC_ENCLAVE_KEY" not in inspect


async def test_happy_path_reads_real_data_and_writes_output(r_base_image, make_job, podman_runner):
    job = make_job(
        r_base_image,
        """
        d <- read.csv("data/input.csv")
        stopifnot(!file.exists("data/synthetic.csv"))   # real data shadows the synthetic
        write.csv(data.frame(total = sum(d$x)), "output/result.csv", row.names = FALSE)
        cat("done\\n")
    """,
    )
    res = await run(podman_runner, job)
    assert res.exit_code == 0 and res.succeeded, res.logs
    assert res.failure_reason() == ""
    assert (job.output_dir / "result.csv").read_text().splitlines() == ['"total"', "6"]
    assert "done" in res.logs


async def test_nonzero_exit_is_a_failure(r_base_image, make_job, podman_runner):
    job = make_job(r_base_image, "cat('about to fail\\n'); quit(status = 3)")
    res = await run(podman_runner, job)
    assert res.exit_code == 3 and not res.succeeded  # W9
    assert res.failure_reason() == "the R script exited with code 3"


async def test_logs_are_truncated_with_a_marker(busybox_image, make_job, podman_runner):
    job = make_job(
        busybox_image, "echo FIRST; yes line | head -n 20000; echo LAST", kind="sh", log_bytes=4096
    )
    res = await run(podman_runner, job)
    assert res.logs_cut_bytes > 100000 - 4096
    assert f"[... log truncated: {res.logs_cut_bytes} bytes cut ...]" in res.logs
    assert res.logs.startswith("FIRST") and res.logs.rstrip().endswith("LAST")
    assert len(res.logs) < 4096 + 100


async def test_cleanup_removes_container_idempotently(busybox_image, make_job, podman_runner):
    job = make_job(busybox_image, "echo hi", kind="sh")
    await run(podman_runner, job)
    assert job.run_id in await podman_runner.list_run_ids()
    await podman_runner.cleanup(job)
    await podman_runner.cleanup(job)
    assert await podman_runner.get_status(job) is JobState.UNKNOWN
    assert job.run_id not in await podman_runner.list_run_ids()
    await podman_runner.terminate(job)  # also harmless on a missing container


async def test_steps_are_idempotent(busybox_image, make_job, podman_runner):
    job = make_job(busybox_image, "echo once >> output/count.txt", kind="sh")
    await podman_runner.prepare(job)
    await podman_runner.prepare(job)
    assert await podman_runner.get_status(job) is JobState.PREPARED
    await podman_runner.execute(job)
    res = await podman_runner.wait(job)
    await podman_runner.execute(job)  # exited: not started a second time
    assert await podman_runner.get_status(job) is JobState.EXITED
    assert (job.output_dir / "count.txt").read_text() == "once\n"
    assert (await podman_runner.finalize(job)).exit_code == res.exit_code == 0


async def test_finalize_after_service_restart(busybox_image, make_job, podman_runner):
    job = make_job(busybox_image, "echo before-restart; exit 5", kind="sh")
    await podman_runner.prepare(job)
    await podman_runner.execute(job)
    fresh = PodmanRunner()  # the service restarted: no memory
    for _ in range(100):
        if await fresh.get_status(job) is JobState.EXITED:
            break
        time.sleep(0.1)
    res = await fresh.finalize(job)
    assert res.exit_code == 5 and not res.succeeded and "before-restart" in res.logs
    assert job.run_id in await fresh.list_run_ids()


def test_mountpoint_links_are_replaced_not_followed(tmp_path, make_job):
    victim = tmp_path / "host-dir"
    victim.mkdir()
    job = make_job("unused", "", kind="sh")
    d = job.code_dir / "kinetic" / "data"
    for p in d.iterdir():
        p.unlink()
    d.rmdir()
    d.symlink_to(victim)
    (job.code_dir / "kinetic" / "output").write_text("a file where a dir must be")
    stage_job(job)
    assert d.is_dir() and not d.is_symlink() and list(victim.iterdir()) == []
    assert (job.code_dir / "kinetic" / "output").is_dir()
    assert job.output_dir.stat().st_uid == 1010 and oct(job.output_dir.stat().st_mode)[-3:] == "700"
    (job.code_dir / "kinetic").rename(job.code_dir / "real")
    (job.code_dir / "kinetic").symlink_to(victim)
    with pytest.raises(ValueError):
        stage_job(job)


def test_spec_carries_every_hardening_flag_and_refuses_secret_env(make_job):
    job = make_job("img", "", kind="sh", memory_mb=512, tmpfs_mb=32)
    argv = ContainerSpec.from_job(job).create_argv("podman", runtime="runc")
    joined = " ".join(argv)
    for flag in (
        "--network none",
        "--user 1010:1010",
        "--cap-drop ALL",
        "--security-opt no-new-privileges",
        "--read-only ",
        "--pull never",
        "--memory 512m",
        "--memory-swap 512m",
        "--pids-limit 256",
        "--ulimit nofile=1024:1024",
        "--ulimit nproc=",
        "--ulimit fsize=",
        "/tmp:rw,noexec,nosuid,nodev,mode=1777,size=32m",
        "--runtime runc",
        "--label kinetic.run_id=" + job.run_id,
        "--name kinetic-run-" + job.run_id,
    ):
        assert flag in joined, flag
    mounts = [a for a in argv if a.startswith("type=bind")]
    assert [m.endswith(",readonly") for m in mounts] == [True, True, False]
    assert mounts[2].split(",")[2] == "target=/home/editor/kinetic/output"
    job.env = {"KINETIC_API_KEY": "x"}
    with pytest.raises(ValueError):
        ContainerSpec.from_job(job)
