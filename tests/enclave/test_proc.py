"""The one way the enclave runs local commands: a command that overstays is killed, not leaked."""

import os
import time

import pytest

from enclave_service import proc


async def test_an_overstaying_command_is_killed_and_reaped(tmp_path):
    marker = tmp_path / "pid"
    t0 = time.monotonic()
    with pytest.raises(proc.CommandTimeout):
        await proc.run(["sh", "-c", f"echo $$ > {marker}; exec sleep 30"], 0.5)
    assert time.monotonic() - t0 < 5
    pid = int(marker.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone, and reaped (a zombie would still accept signal 0)


async def test_output_input_and_merged_streams():
    rc, out, err = await proc.run(["sh", "-c", "cat; echo oops >&2; exit 3"], 10, input=b"hello\n")
    assert (rc, out, err) == (3, b"hello\n", b"oops\n")
    rc, out, err = await proc.run(["sh", "-c", "echo a; echo b >&2"], 10, merge_stderr=True)
    assert rc == 0 and set(out.split()) == {b"a", b"b"} and err == b""
