"""Running a local command from the hub without blocking its event loop (podman, iptables).

One helper, so every command the spawner starts gets the same guarantees: a time limit, the
process killed and reaped when it overstays, and its output decoded for log lines and messages.
"""

from __future__ import annotations

import asyncio


async def run_command(
    argv: list[str], timeout: float, *, env: dict | None = None, merge_stderr: bool = True
) -> tuple[int, str, str]:
    """(returncode, stdout, stderr) as text; with ``merge_stderr`` stderr is folded into stdout.

    A command that overstays ``timeout`` is killed and reaped, and reported as returncode -1 with
    a sentence in stderr (and stdout, when merged)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        said = f"{' '.join(argv[:2])} did not finish within {timeout:.0f} s"
        return -1, said if merge_stderr else "", said
    text = out.decode(errors="replace").strip()
    return proc.returncode, text, text if merge_stderr else (err or b"").decode(errors="replace").strip()
