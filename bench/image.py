"""The workspace image, built cold and then asked for again (both measured in this run):

* cold: the workspace image built from scratch: no layer cache, its Python wheels collected
  again into an empty wheelhouse (the shared R base image is kept: it is the enclave's too, and
  is built once per machine). It is built under a bench repository and removed afterwards, so
  workspaces running the real tag meanwhile are not disturbed (podman refuses to remove an image
  a container uses);
* cached: ``ensure_workspace_image()`` when the image exists (what every later ``make demo``
  and every workspace start pays), and the same through the CLI (a fresh Python process).

    make bench        (or: .venv/bin/python -m bench image)

BENCH_RUNS (5) cached calls are timed; the median is reported.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
BENCH_REPO = "localhost/kinetic-workspace-bench"


def main() -> None:
    from enclave_service.images import ensure_base_image
    from kinetic_spawner.image import builder

    asyncio.run(ensure_base_image())  # kept: not part of the cold build
    tag = builder.workspace_image_tag()
    asyncio.run(builder.ensure_workspace_image())  # the real one, for the cached timings
    bench_tag = f"{BENCH_REPO}:{tag.split(':')[1]}"
    subprocess.run(["podman", "rmi", "--ignore", bench_tag], capture_output=True, check=False)
    with tempfile.TemporaryDirectory(prefix="bench-image-") as cache:
        saved = os.environ.get("KINETIC_CACHE_DIR")
        os.environ["KINETIC_CACHE_DIR"] = cache  # an empty wheelhouse
        steps = []
        t0 = time.monotonic()
        try:
            built = asyncio.run(
                builder.ensure_workspace_image(
                    on_progress=lambda m: steps.append((time.monotonic() - t0, m)),
                    layer_cache=False,
                    repo=BENCH_REPO,
                )
            )
        finally:
            if saved is None:
                os.environ.pop("KINETIC_CACHE_DIR", None)
            else:
                os.environ["KINETIC_CACHE_DIR"] = saved
        cold = time.monotonic() - t0
    assert built == bench_tag
    subprocess.run(["podman", "rmi", "--ignore", bench_tag], capture_output=True, check=False)
    cached = []
    for _ in range(RUNS):
        t0 = time.monotonic()
        asyncio.run(builder.ensure_workspace_image())
        cached.append(time.monotonic() - t0)
    cli = []
    for _ in range(max(1, RUNS // 2)):
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "kinetic_spawner.image"], capture_output=True, check=True)
        cli.append(time.monotonic() - t0)
    t0 = time.monotonic()
    builder.workspace_image_tag()
    tag_time = time.monotonic() - t0
    c, k = statistics.median(cached), statistics.median(cli)
    print(f"workspace image {tag}")
    for at, message in steps:
        print(f"  +{at:6.1f} s  {message}")
    print(f"  cold build (no layer cache, empty wheelhouse, base kept): {cold:7.1f} s")
    print(f"  cached ensure_workspace_image(), median of {RUNS}:        {c * 1000:7.0f} ms")
    print(f"  cached, CLI `python -m kinetic_spawner.image`:           {k * 1000:7.0f} ms")
    print(f"  workspace_image_tag() alone:                            {tag_time * 1000:7.1f} ms")
    print(f"  ratio cold / cached: {cold / c:.0f}x  (cold / CLI: {cold / k:.0f}x)")


if __name__ == "__main__":
    main()
