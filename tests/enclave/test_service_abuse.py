"""The enclave under abuse (issue 8), each abuse a run that tries it through the API, with the real
hub, podman and R image: filling the host's disk, row-level data and identifiers dressed as
results, hidden files, a header bomb in the archive. What a person would notice is asserted: the
state, the words, the report's rule and evidence, what is left on disk, the service's memory."""

import re
import tarfile
import time

import pytest
import zstandard

from enclave_service.archive import create_archive
from kinetic_auth.standin.seed import ADA, GRACE

from .service_fixtures import *  # noqa: F401,F403
from .service_fixtures import make_home, wait_for_state

ENDS = {
    "in_review",
    "failed_archived",
    "failed_code_checked",
    "failed_built",
    "failed_ran",
    "failed_outputs_checked",
}


async def _submit(hub, tmp_path, name, main_r, who=ADA, analysis=101):
    home = make_home(tmp_path / name, 'cutoff_date = "2026-01-15"\n' + main_r)
    archive = (await create_archive(home, tmp_path / f"{name}.tar.zst")).path
    r = hub.submit_archive(who, analysis, archive, message=name)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _run_files(hub, run_id):
    run_dir = hub.enclave_state / "runs" / run_id
    return sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*")) if run_dir.exists() else []


def _after_cleanup(hub, run_id, timeout=60):
    """What is left of a finished run once its clean-up is done (the code folder goes last)."""
    deadline = time.monotonic() + timeout
    while (hub.enclave_state / "runs" / run_id / "code").exists():
        assert time.monotonic() < deadline, "the finished run was never cleaned up"
        time.sleep(0.2)
    return _run_files(hub, run_id)


def _mounted(path) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


async def test_six_files_of_255_mib_fail_the_run_in_words_and_leave_nothing(enclave_hub, tmp_path):
    """A hostile script that ignores write errors and exits 0: output/ is a 256 MiB volume, so
    1.5 GiB never reach the host; the run fails saying so and its outputs are deleted."""
    hub = enclave_hub
    script = (
        "x <- raw(2^20)\n"
        "for (i in 1:6) {\n"
        '  con <- file(sprintf("output/big%d.csv", i), "wb")\n'
        "  for (j in 1:255) try(writeBin(x, con), silent = TRUE)\n"
        "  try(close(con), silent = TRUE)\n"
        "}\n"
        'cat("wrote them all, exiting 0\\n")\n'
    )
    run_id = await _submit(hub, tmp_path, "fill", script)
    run = wait_for_state(hub, ADA, run_id, ENDS, timeout=300)
    assert run["state"] == "failed_ran", run["failure"]
    assert "output/ reached its limit of 256 MiB" in run["failure"], run["failure"]
    assert "outputs were deleted" in run["failure"]
    left = _after_cleanup(hub, run_id)
    assert left == ["archive.tar.zst"], left  # the archive stays for the retention period
    assert not _mounted(hub.enclave_state / "runs" / run_id / "output.volume")


@pytest.mark.parametrize(
    "name, script, rule, words",
    [
        # 120 rows of real data, numeric columns only: the data itself, not a result
        (
            "numeric-rows",
            'd <- read.csv("data/responses.csv")\n'
            'write.csv(d[, c("week", "minutes_reading", "quiz_score")], "output/table.csv", row.names = FALSE)\n',
            "record-rows",
            "exactly as many as the input data has records",
        ),
        # real student ids with their letter prefix dropped, in a column named k, beside quiz scores
        (
            "bare-ids",
            'd <- read.csv("data/responses.csv")\n'
            'out <- data.frame(k = as.numeric(sub("^S", "", d$student_id)), quiz = d$quiz_score)[1:40, ]\n'
            'write.csv(out, "output/scores.csv", row.names = FALSE)\n',
            "identifier-values",
            "look like Kinetic student id without its prefixs",
        ),
        # ids inside a text file
        (
            "text-ids",
            'd <- read.csv("data/responses.csv")\n'
            'writeLines(paste("student", d$student_id[1:5], "scored", d$quiz_score[1:5]), "output/notes.txt")\n',
            "identifier-values",
            "look like an Kinetic student id",
        ),
        # a hidden file beside a clean summary
        (
            "dotfile",
            'd <- read.csv("data/responses.csv")\n'
            "agg <- aggregate(quiz_score ~ course, data = d, FUN = mean)\n"
            "agg$students <- as.vector(table(d$course)[agg$course])\n"
            'write.csv(agg, "output/summary.csv", row.names = FALSE)\n'
            'write.csv(d, "output/.secret.csv", row.names = FALSE)\n',
            "hidden-file",
            "never released",
        ),
    ],
)
async def test_row_level_data_and_identifiers_never_pass(enclave_hub, tmp_path, name, script, rule, words):
    hub = enclave_hub
    run_id = await _submit(hub, tmp_path, name, script, who=GRACE)
    run = wait_for_state(hub, GRACE, run_id, ENDS, timeout=240)
    assert run["state"] == "failed_outputs_checked", (run["state"], run["failure"])
    report = run["output_report"]
    findings = [(f["path"], x) for f in report["files"] for x in f["findings"]]
    hit = [(path, x) for path, x in findings if x["rule"] == rule and x["level"] == "fail"]
    assert hit and any(words in x["evidence"] for _, x in hit), findings
    # the evidence names no real id in full (at most its first two characters)
    assert not re.search(r"\d{4}", " ".join(x["evidence"] for _, x in hit if "id" in x["evidence"])), hit
    # nothing of a failed run's outputs is kept for the retention period
    assert _after_cleanup(hub, run_id) == ["archive.tar.zst"]
    # the reviewers never see it: it is not in their queue
    from kinetic_auth.standin.seed import ROSALIND

    assert run_id not in [x["id"] for x in hub.call(ROSALIND, "GET", "api/runs").json()["queue"]]


def _vm(pid: int, key: str) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _pax_bomb(dest, header_bytes=150 * 2**20):
    """A valid tar+zstd archive of about 5 KB whose first member is a pax header of 150 MiB."""
    value_len = header_bytes - 64
    body_len = len(" comment=") + value_len + 1
    n = body_len + len(str(body_len))
    n = body_len + len(str(n))
    ti = tarfile.TarInfo("archive/PaxHeaders/x")
    ti.type, ti.size = tarfile.XHDTYPE, n
    with open(dest, "wb") as raw, zstandard.ZstdCompressor(level=19).stream_writer(raw) as zw:
        zw.write(ti.tobuf(format=tarfile.USTAR_FORMAT))
        zw.write(f"{n} comment=".encode())
        chunk = b"a" * 2**20
        for start in range(0, value_len, len(chunk)):
            zw.write(chunk[: min(len(chunk), value_len - start)])
        zw.write(b"\n" + b"\0" * ((-n) % 512) + b"\0" * 1024)
    return dest


async def test_a_pax_header_bomb_is_refused_without_the_service_growing(enclave_hub, tmp_path):
    hub = enclave_hub
    bomb = _pax_bomb(tmp_path / "bomb.tar.zst")
    assert bomb.stat().st_size < 8000
    pid = hub.service_pid()
    with open(f"/proc/{pid}/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
        f.write("5")
    before = _vm(pid, "VmRSS")
    r = hub.submit_archive(ADA, 101, bomb, message="pax bomb")
    assert r.status_code == 201, r.text
    run = wait_for_state(hub, ADA, r.json()["id"], ENDS, timeout=60)
    assert run["state"] == "failed_archived"
    assert "pax extended header of 1572" in run["failure"] and "at most 65536" in run["failure"]
    peak = _vm(pid, "VmHWM")
    assert peak - before < 40 * 2**20, f"the service grew by {(peak - before) / 2**20:.0f} MiB"


async def test_every_indirection_pattern_is_flagged_in_the_code_report(enclave_hub, tmp_path):
    hub = enclave_hub
    lines = [
        'f <- get(paste0("download", ".file"))',
        'g <- match.fun(paste0("sys", "tem"))',
        'p <- readLines(file.path("", "etc", "shadow"))',
        'h <- utils::nsl("example.org")',
        "e <- eval(parse_me)",
        'z <- do.call(paste0("sys", "tem"), list("id"))',
    ]
    run_id = await _submit(hub, tmp_path, "indirect", "\n".join(lines) + "\n")
    run = wait_for_state(hub, ADA, run_id, ENDS, timeout=120)
    assert run["state"] == "failed_code_checked"
    flagged = {f["line"]: (f["rule"], f["severity"]) for f in run["code_report"]["findings"]}
    # main.r starts with the cutoff line, so the patterns are on lines 2..7
    assert flagged == {
        2: ("indirection", "review"),
        3: ("indirection", "review"),
        4: ("outside-project", "fail"),
        5: ("network", "fail"),
        6: ("dynamic-code", "review"),
        7: ("indirection", "review"),
    }, flagged
