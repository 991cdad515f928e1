"""Running provision.sh and reading its progress, the same way in every world.

The script (``provision.sh``) is run by the container backend inside the workspace image (as uid
1010), by the process backend as a plain process, and later over SSH on an EC2 host. Its inputs
always travel in the environment, never in argv; its ``::step`` lines become progress messages.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from .backends import BackendError, ProvisionInputs, ProvisionResult, redact

PACKAGE_DIR = Path(__file__).resolve().parent
PROVISION_SH = PACKAGE_DIR / "provision.sh"
BLANK_PROJECT = PACKAGE_DIR / "blank_project"
VENV_BIN = Path(sys.executable).parent


def restore_default_sigint() -> None:
    """preexec_fn: a hub started from a non-interactive shell has SIGINT ignored, and children
    inherit that; restore the default so the child can be interrupted like any process."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def provision_env(home: str, inputs: ProvisionInputs) -> dict[str, str]:
    """A small, explicit environment for provision.sh: the hub's own environment (which may hold
    its secrets) is not handed on."""
    fetch = VENV_BIN / "kinetic-fetch-data"
    env = {
        "HOME": home,
        "PATH": os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", os.defpath)]),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "KINETIC_BLANK_PROJECT": str(BLANK_PROJECT),
        "KINETIC_FETCH_DATA": str(fetch)
        if fetch.exists()
        else f"{sys.executable} -m kinetic_spawner.fetch_data",
    }
    # the fetch tool imports this package: make it importable however the hub was installed
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in [str(PACKAGE_DIR.parent), os.environ.get("PYTHONPATH", "")] if p
    )
    env.update(inputs.env())
    return env


async def run_provision(
    home: str,
    inputs: ProvisionInputs,
    on_script_step=None,
    timeout: float = 300.0,
    script: Path = PROVISION_SH,
    log=None,
) -> ProvisionResult:
    """Run provision.sh for one analysis home as a process on this machine (process backend,
    tests). Inputs in the environment only."""
    return await run_script(
        ["bash", str(script)],
        provision_env(home, inputs),
        inputs,
        on_script_step,
        timeout=timeout,
        cwd=home,
        log=log,
    )


async def run_script(
    argv: list[str],
    env: dict,
    inputs: ProvisionInputs,
    on_script_step=None,
    *,
    timeout: float = 300.0,
    cwd: str | None = None,
    log=None,
    on_timeout=None,
) -> ProvisionResult:
    """Run a provisioning command (provision.sh itself, or ``podman run … provision.sh``) and read
    its progress.

    Streams the script's ``::step`` lines (without the prefix) to ``on_script_step`` as they come.
    Raises BackendError with the script's own error text (secrets removed) when it fails or runs
    past ``timeout``; then the process group is killed and ``on_timeout()`` (a coroutine, e.g.
    removing a container the command had started) is awaited.
    """
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
        preexec_fn=restore_default_sigint,
    )
    steps: list[str] = []
    out: list[str] = []
    errors: list[str] = []

    async def read(stream, sink, is_stdout):
        async for raw in stream:
            line = redact(raw.decode(errors="replace").rstrip("\n"), inputs.api_key)
            sink.append(line)
            if is_stdout and line.startswith("::step "):
                step = line[len("::step ") :]
                steps.append(step)
                if on_script_step:
                    on_script_step(step)
            if log:
                log.debug("provision[%s]: %s", inputs.analysis_id, line)

    try:
        await asyncio.wait_for(
            asyncio.gather(read(proc.stdout, out, True), read(proc.stderr, errors, False), proc.wait()),
            timeout,
        )
    except (TimeoutError, asyncio.CancelledError) as e:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await proc.wait()
        if on_timeout is not None:
            await asyncio.shield(on_timeout())
        if isinstance(e, asyncio.CancelledError):
            raise
        raise BackendError(f"provisioning did not finish within {timeout:.0f} s") from None
    output = "\n".join(out + errors)
    if proc.returncode != 0:
        detail = "; ".join(line for line in errors if line.strip())[-600:] or f"exit status {proc.returncode}"
        raise BackendError(f"provisioning failed: {detail}")
    return ProvisionResult(seeded=any(s.startswith("seeded") for s in steps), steps=steps, output=output)


__all__ = [
    "run_provision",
    "run_script",
    "provision_env",
    "PROVISION_SH",
    "BLANK_PROJECT",
    "restore_default_sigint",
]
