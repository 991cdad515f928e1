"""Click → workspace: how long a researcher waits for a workspace container, against the same hub
code starting the same workspace as a process of its own (the development backend: no image, no
container, no isolation), measured in one run.

Two hubs from hub_config/jupyterhub_config.py run side by side, one per backend
(KINETIC_WORKSPACE_BACKEND), signed in to by one Kinetic stand-in; runs alternate between them so
that whatever else this shared machine does falls on both alike. A run = sign in at Kinetic and at
the hub, open /hub/analysis/102 as a browser would, follow until the workspace answers through the
proxy (the first run of each also provisions the analysis home); then the workspace is stopped.
The workspace image is built (or found) before anything is timed: its cost is `bench.image`'s.

    make bench        (or: .venv/bin/python -m bench workspace_start)

BENCH_RUNS (3) runs per backend; medians and their ratio are printed.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from kinetic_auth.standin.seed import ADA
from tests.hub import container_instance, owner, remove_containers, running_hub
from tests.support import running_standin

RUNS = int(os.environ.get("BENCH_RUNS", "3"))
BACKENDS = ("container", "process")


def click_to_workspace(hub) -> float:
    started = time.monotonic()
    s = hub.browser_session(ADA)  # sign in at Kinetic and at the hub
    page = hub.open_analysis(s, 102, timeout=300)  # open the analysis, wait for the workspace
    assert page.status_code == 200 and "RStudio" in page.text, (page.status_code, page.text[:300])
    took = time.monotonic() - started
    hub.stop_workspace(owner(102), "a-102")
    return took


def main():
    from kinetic_spawner.image import ensure_workspace_image

    t0 = time.monotonic()
    image = asyncio.run(ensure_workspace_image())
    print(f"workspace image {image} ready in {time.monotonic() - t0:.1f} s (not part of the timings)")
    times = {b: [] for b in BACKENDS}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "standin").mkdir()
        try:
            with (
                running_standin(tmp / "standin") as standin,
                running_hub(
                    tmp / "hub-container", standin, env_overrides={"KINETIC_WORKSPACE_BACKEND": "container"}
                ) as container_hub,
                running_hub(
                    tmp / "hub-process",
                    standin,
                    env_overrides={
                        "KINETIC_WORKSPACE_BACKEND": "process",
                        "KINETIC_PROCESS_BACKEND_AS_ROOT": "1",
                    },
                ) as process_hub,
            ):
                hubs = {"container": container_hub, "process": process_hub}
                for _ in range(RUNS):
                    for backend in BACKENDS:
                        times[backend].append(click_to_workspace(hubs[backend]))
        finally:
            # this bench's own containers only, should a run have failed halfway
            remove_containers(container_instance(tmp / "hub-container"))
    c, p = (statistics.median(times[b]) for b in BACKENDS)
    for b in BACKENDS:
        print(
            f"sign-in -> workspace, {b + ' backend:':19s} {', '.join(f'{x:.2f}' for x in times[b])} s"
            f"  (first run provisions the analysis home)"
        )
    print(f"median {c:.2f} s (container) vs {p:.2f} s (process, same hub code): ratio {c / p:.2f}x")


if __name__ == "__main__":
    main()
