"""How the workspace image is made: its inputs, its fingerprint, its build context, its build.

Inputs (all of them go into the fingerprint, so the tag changes exactly when one changes):
  * the shared R base image tag (itself a hash of ``build_base.sh`` and ``BASE_PACKAGES``);
  * the ``Containerfile`` template;
  * the Python pins: jupyterhub, jupyterlab, jupyter-server-proxy, jupyter-rsession-proxy and
    everything they require, each at the version installed in the hub's own environment;
  * every file copied into the image (provisioning, the blank project, kinetic-fetch-data and the
    first-party modules it imports, the entry command, the server config, JupyterLab overrides).
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import importlib.metadata
import inspect
import os
import shutil
import string
import sys
import tempfile
import time
from pathlib import Path

from enclave_service import images as base_images

HERE = Path(__file__).resolve().parent
SPAWNER = HERE.parent
CONTAINERFILE = HERE / "Containerfile"
REPO = "localhost/kinetic-workspace"
PYTHON = (3, 11)  # Debian 12's python3, the image's interpreter
IMAGE_PYTHON = "3.11.2"  # its exact version (Requires-Python checks)
TOP_LEVEL = ("jupyterhub", "jupyterlab", "jupyter-server-proxy", "jupyter-rsession-proxy")
FIRST_PARTY = ("kinetic_auth", "kinetic_spawner", "kinetic_common", "kinetic_core", "enclave_service")
# First-build durations measured on a 2-core machine (bench.image), for the progress line.
ESTIMATE_MIN = {"base": 2, "workspace": 1}


class ImageBuildError(RuntimeError):
    """The workspace image could not be built; the message says which step and why."""


def cache_dir() -> Path:
    """Where wheelhouses and build contexts are kept (``KINETIC_CACHE_DIR`` or ~/.cache/kinetic)."""
    if os.environ.get("KINETIC_CACHE_DIR"):
        return Path(os.environ["KINETIC_CACHE_DIR"])
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "kinetic"


# -- Python: same versions as the hub ------------------------------------------------------------
def check_python(version: tuple[int, int] | None = None) -> None:
    """Wheels come from this interpreter's resolver: it must be the image's Python."""
    v = tuple(version or sys.version_info[:2])
    if v != PYTHON:
        raise ImageBuildError(
            f"the hub runs Python {v[0]}.{v[1]}, but the workspace image has Debian 12's Python "
            f"{PYTHON[0]}.{PYTHON[1]}: wheels resolved here would not install there. Run the hub "
            f"(and this build) with Python {PYTHON[0]}.{PYTHON[1]}."
        )


def _headers(dist) -> dict[str, list[str]]:
    """The METADATA headers only (the long description after them is not parsed: fast)."""
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    out: dict[str, list[str]] = {}
    last = None
    for line in text.split("\n\n", 1)[0].splitlines():
        if line[:1] in (" ", "\t") and last:
            out[last][-1] += " " + line.strip()
        elif ":" in line:
            last, _, value = line.partition(":")
            out.setdefault(last, []).append(value.strip())
    return out


def requirement_pins(top=TOP_LEVEL) -> list[str]:
    """What the image's pip is asked for: ``name==version`` as installed for the hub, for
    ``top`` and everything they require (markers evaluated for this interpreter, which has the
    image's Python minor version: see ``check_python``). A requirement whose hub version does
    not accept the image's exact Python (Debian 12: 3.11.2) is left as a bare name: the host's
    resolver picks a version for it when the wheelhouse is made."""
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name

    installed = {}  # one pass over sys.path, names from folder names
    for d in importlib.metadata.distributions():
        name = getattr(d, "_normalized_name", None) or d.metadata["Name"] or ""
        installed.setdefault(canonicalize_name(name), d)
    pins: dict[str, str] = {}
    done: set[tuple[str, str]] = set()
    todo = [(name, ("",)) for name in top]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        dist = installed.get(key)
        if dist is None:
            raise ImageBuildError(
                f"{name} is not installed in the hub's environment ({sys.prefix}); the workspace "
                f"image takes its Python package versions from there"
            )
        meta = _headers(dist)
        version = meta["Version"][0]
        requires_python = (meta.get("Requires-Python") or [""])[0]
        fits = not requires_python or IMAGE_PYTHON in SpecifierSet(requires_python)
        if not fits and key in map(canonicalize_name, top):
            raise ImageBuildError(
                f"{key} {version} (the hub's) needs Python {requires_python}; the image has {IMAGE_PYTHON}"
            )
        pins[key] = f"{key}=={version}" if fits else key
        for extra in extras:
            if (key, extra) in done:
                continue
            done.add((key, extra))
            for line in meta.get("Requires-Dist", ()):
                req = Requirement(line)
                if req.marker is None:
                    if extra:
                        continue  # already taken with the plain package
                elif not req.marker.evaluate({"extra": extra}):
                    continue
                todo.append((req.name, ("", *sorted(req.extras))))
    return [pins[k] for k in sorted(pins)]


# -- files copied into the image -------------------------------------------------------------------
def _module_file(name: str) -> Path | None:
    """The source file of a first-party module, found beside this package (nothing imported)."""
    stem = SPAWNER.parent.joinpath(*name.split("."))
    for p in (stem.with_suffix(".py"), stem / "__init__.py"):
        if p.is_file():
            return p
    return None


def _first_party_imports(path: Path, module: str) -> set[str]:
    """First-party modules ``module`` (at ``path``) imports, by its syntax tree (no import)."""
    tree = ast.parse(path.read_bytes(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = ".".join(parts[: len(parts) - node.level + 1])
                base = f"{parent}.{base}".strip(".")
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            if n.split(".")[0] in FIRST_PARTY and _module_file(n):
                found.add(n)
    return found


def lib_modules(entry: str = "kinetic_spawner.fetch_data") -> dict[str, Path]:
    """``entry`` and the first-party modules it needs, transitively: module name -> file.
    Packages on the way get a stub ``__init__`` unless a module imports the package itself,
    so the image does not change when unrelated hub code does."""
    out: dict[str, Path] = {}
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in out:
            continue
        path = _module_file(name)
        if path is None:
            raise ImageBuildError(f"the module {name} (needed by kinetic-fetch-data) was not found")
        out[name] = path
        todo += sorted(_first_party_imports(path, name) - out.keys())
    return out


def context_files() -> dict[str, tuple[bytes, int]]:
    """Every file of the build context but the wheels: relative path -> (content, mode)."""
    files: dict[str, tuple[bytes, int]] = {}

    def add(rel: str, src: Path | bytes, mode: int = 0o644):
        files[rel] = (src if isinstance(src, bytes) else src.read_bytes(), mode)

    add("opt/provision/provision.sh", SPAWNER / "provision.sh", 0o755)
    blank = SPAWNER / "blank_project"
    for p in sorted(blank.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            add(f"opt/provision/blank_project/{p.relative_to(blank).as_posix()}", p)
    modules = lib_modules()
    for name, path in modules.items():
        rel = name.replace(".", "/") + ("/__init__.py" if path.name == "__init__.py" else ".py")
        add(f"opt/lib/{rel}", path)
    for name in modules:
        parts = name.split(".")
        for i in range(1, len(parts)):
            stub = "opt/lib/" + "/".join(parts[:i]) + "/__init__.py"
            files.setdefault(
                stub,
                (
                    f'"""{".".join(parts[:i])}: only what kinetic-fetch-data '
                    f'needs inside the workspace image."""\n'.encode(),
                    0o644,
                ),
            )
    add("opt/bin/kinetic-workspace", HERE / "files" / "kinetic-workspace", 0o755)
    add("opt/bin/kinetic-fetch-data", HERE / "files" / "kinetic-fetch-data", 0o755)
    add("jupyter/jupyter_server_config.py", HERE / "files" / "jupyter_server_config.py")
    add("jupyter/kinetic_busy_activity.py", HERE / "files" / "kinetic_busy_activity.py")
    add("jupyter/kinetic_named_proxy.py", HERE / "files" / "kinetic_named_proxy.py")
    add("jupyter/kinetic_session_check.py", HERE / "files" / "kinetic_session_check.py")
    add("jupyter/overrides.json", SPAWNER.parent / "rstudio_patch" / "jupyterlab-overrides.json")
    return files


# -- the fingerprint and the tag -------------------------------------------------------------------
def _pins_text(pins: list[str]) -> str:
    return "".join(p + "\n" for p in pins)


def fingerprint(base: str, containerfile: str, pins: list[str], files: dict[str, tuple[bytes, int]]) -> str:
    h = hashlib.sha256(f"base\0{base}\0containerfile\0{containerfile}\0pins\0{_pins_text(pins)}\0".encode())
    for rel in sorted(files):
        data, mode = files[rel]
        h.update(f"{rel}\0{mode:o}\0".encode() + hashlib.sha256(data).digest())
    return h.hexdigest()


def _inputs() -> tuple[str, str, list[str], dict]:
    return (base_images.base_image_tag(), CONTAINERFILE.read_text(), requirement_pins(), context_files())


def workspace_image_tag() -> str:
    """The tag the current inputs give, ``localhost/kinetic-workspace:<24 hex>``. Pure and cheap:
    reads a few files and the hub's package metadata; no podman, no network."""
    return f"{REPO}:{fingerprint(*_inputs())[:24]}"


# -- building --------------------------------------------------------------------------------------
async def _say(on_progress, message: str) -> None:
    if on_progress is not None:
        result = on_progress(message)
        if inspect.isawaitable(result):
            await result


async def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    return await base_images._run(argv, timeout)


def _wheel_files(directory: Path) -> dict[str, Path]:
    from packaging.utils import canonicalize_name, parse_wheel_filename

    out = {}
    for p in directory.glob("*.whl"):
        name, version, *_ = parse_wheel_filename(p.name)
        out[f"{canonicalize_name(name)}=={version}"] = p
    return out


async def ensure_wheelhouse(pins: list[str], on_progress=None, timeout: float = 1800) -> Path:
    """A directory of wheels for ``pins`` and all they need, resolved by the host's pip (with this
    host's pip configuration) for the image's Python, and ``requirements.txt`` naming exactly
    those wheels. Kept by pin set, so made once per host."""
    check_python()
    key = hashlib.sha256(f"cp{IMAGE_PYTHON}\0{_pins_text(pins)}".encode()).hexdigest()[:16]
    house = cache_dir() / "wheelhouse" / key
    if (house / "requirements.txt").is_file():
        return house
    await _say(on_progress, f"collecting {len(pins)} Python wheels from the host's resolver")
    house.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=house.parent))
    try:
        (tmp / "pins.txt").write_text(_pins_text(pins))
        rc, out = await _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--only-binary=:all:",
                "--python-version",
                IMAGE_PYTHON,
                "--dest",
                str(tmp),
                "-r",
                str(tmp / "pins.txt"),
            ],
            timeout,
        )
        if rc != 0:
            raise ImageBuildError(
                f"collecting the workspace's Python wheels failed (pip download "
                f"for Python {IMAGE_PYTHON}): {out.strip()[-1500:]}"
            )
        have = _wheel_files(tmp)
        names = {h.split("==")[0] for h in have}
        missing = [p for p in pins if p not in have and p.split("==")[0] not in names]
        if missing:
            raise ImageBuildError(f"pip downloaded no wheel for {', '.join(missing)}")
        (tmp / "pins.txt").unlink()
        (tmp / "requirements.txt").write_text(_pins_text(sorted(have)))
        try:
            tmp.rename(house)
        except OSError:  # another build made it meanwhile: use theirs
            if not (house / "requirements.txt").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return house


def write_context(
    ctx: Path, base: str, fp: str, pins: list[str], files: dict, wheelhouse: Path | None
) -> None:
    """The build context: ``Containerfile``, ``opt/``, ``jupyter/``, ``wheels/``. Any engine
    can build it (``podman build``, ``docker build``)."""
    ctx.mkdir(parents=True, exist_ok=True)
    text = string.Template(CONTAINERFILE.read_text()).substitute(
        base=base, fingerprint=fp[:24], pins=hashlib.sha256(_pins_text(pins).encode()).hexdigest()[:16]
    )
    (ctx / "Containerfile").write_text(text)
    for rel, (data, mode) in files.items():
        p = ctx / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        p.chmod(mode)
    wheels = ctx / "wheels"
    wheels.mkdir(exist_ok=True)
    if wheelhouse is None:
        (wheels / "requirements.txt").write_text(_pins_text(pins))
    else:
        shutil.copy2(wheelhouse / "requirements.txt", wheels / "requirements.txt")
        for w in _wheel_files(wheelhouse).values():
            try:
                os.link(w, wheels / w.name)
            except OSError:
                shutil.copy2(w, wheels / w.name)


_locks: dict[int, asyncio.Lock] = {}  # one build at a time per event loop (locks bind to one)


async def ensure_workspace_image(
    on_progress=None,
    *,
    podman: str = "podman",
    runtime: str = "runc",
    timeout: float = 3600,
    layer_cache: bool = True,
    repo: str = REPO,
) -> str:
    """Return the workspace image's tag, building it (and the shared R base) first if this host
    does not have it. ``on_progress(message)`` (plain or async) hears each long step. Never
    blocks the event loop: files are read in a thread, tools run as subprocesses.
    ``layer_cache=False`` rebuilds every layer, keeping no intermediate images, and ``repo`` names
    another repository (the benchmark's cold build, which must not disturb workspaces running
    the real tag). With the layer cache, a change to a copied file rebuilds in seconds."""
    base, containerfile, pins, files = await asyncio.to_thread(_inputs)
    fp = fingerprint(base, containerfile, pins, files)
    tag = f"{repo}:{fp[:24]}"
    if await base_images.image_exists(tag, podman):
        return tag
    async with _locks.setdefault(id(asyncio.get_running_loop()), asyncio.Lock()):
        if await base_images.image_exists(tag, podman):
            return tag
        check_python()
        if not await base_images.image_exists(base, podman):
            await _say(
                on_progress,
                f"building the shared R base image (first time, about {ESTIMATE_MIN['base']} min)",
            )
            try:
                await base_images.ensure_base_image(podman=podman, runtime=runtime)
            except base_images.ImageBuildError as e:
                raise ImageBuildError(str(e)) from None
        house = await ensure_wheelhouse(pins, on_progress)
        await _say(on_progress, "building the workspace image")
        work = cache_dir() / "build"
        work.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="workspace-", dir=work) as tmp:
            ctx = Path(tmp)
            await asyncio.to_thread(write_context, ctx, base, fp, pins, files, house)
            argv = [
                podman,
                "--runtime",
                runtime,
                "build",
                "--pull=never",
                "--network=none",
                *([] if layer_cache else ["--no-cache", "--layers=false"]),
                "--ulimit",
                "nofile=20000:20000",
                "--ulimit",
                "nproc=4096:4096",
                "-f",
                str(ctx / "Containerfile"),
                "-t",
                tag,
                str(ctx),
            ]
            t0 = time.monotonic()
            rc, out = await _run(argv, timeout)
        if rc != 0 or not await base_images.image_exists(tag, podman):
            raise ImageBuildError(
                f"building the workspace image {tag} failed after "
                f"{time.monotonic() - t0:.0f} s: {out.strip()[-2000:]}"
            )
        return tag
