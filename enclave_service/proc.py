"""Running a local command from the service without blocking its event loop.

One helper for every subprocess the enclave starts (podman, the R parser, image builds), so each
gets the same guarantees: a time limit, the process killed and reaped when it overstays, and a
working directory where stray files cannot land in the service's own folder.
"""

from __future__ import annotations

import asyncio
import tempfile


class CommandTimeout(Exception):
    """The command overstayed its time limit; it has been killed and reaped."""

    def __init__(self, argv: list[str], timeout: float):
        super().__init__(f"{' '.join(argv[:2])} timed out after {timeout:.0f} s")
        self.timeout = timeout


async def run(
    argv: list[str],
    timeout: float,
    *,
    input: bytes | None = None,
    env: dict | None = None,
    merge_stderr: bool = False,
    cwd: str | None = None,
) -> tuple[int, bytes, bytes]:
    """(returncode, stdout, stderr); with ``merge_stderr`` stderr is folded into stdout."""
    # cwd: conmon (started by `podman start`) inherits it and drops an `oom` marker file there
    # when the kernel OOM-kills a run; keep that out of whatever directory the service runs in.
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd or tempfile.gettempdir(),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise CommandTimeout(argv, timeout) from None
    return proc.returncode, out, err or b""
