"""``python -m kinetic_spawner.image``: build the workspace image if this host lacks it, then
print its tag on stdout (progress goes to stderr, so ``TAG=$(python -m kinetic_spawner.image)``)."""

import asyncio
import sys
import time

from . import builder


def main() -> int:
    t0 = time.monotonic()
    steps: list[str] = []

    def progress(message: str) -> None:
        if not steps:
            est = builder.ESTIMATE_MIN["workspace"]
            print(f"building the workspace image (first time, about {est} min)…", file=sys.stderr, flush=True)
        steps.append(message)
        print(f"  {message}…", file=sys.stderr, flush=True)

    try:
        tag = asyncio.run(builder.ensure_workspace_image(on_progress=progress))
    except builder.ImageBuildError as e:
        print(f"the workspace image could not be built: {e}", file=sys.stderr)
        return 1
    if steps:
        print(f"… done in {time.monotonic() - t0:.0f} s: {tag}", file=sys.stderr)
    else:
        print(f"workspace image up to date: {tag}", file=sys.stderr)
    print(tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
