"""The workspace image (kinetic_spawner/image), tried for real in podman: who runs, what is
installed, which kernel is the default, when RStudio is offered, provisioning inside the
container as uid 1010 against the Kinetic stand-in, and a tag that follows its inputs."""

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from kinetic_auth.standin.seed import ADA
from kinetic_spawner.image import builder, workspace_image_tag

from .image_fixtures import podman_ok, run_in, workspace_image_fixture  # noqa: F401 (fixture)
from .support import (
    ROOT,
    Standin,
    free_port,
    start_process,
    stop_process,
    wait_for_http,
)

needs_podman = pytest.mark.skipif(not podman_ok(), reason="podman and runc are required")
FAKE_RSERVER = ROOT / "tests" / "bin" / "rserver"
# Roughly what the container backend does: read-only image, tmpfs /tmp, the home mounted.
CONFINED = [
    "--read-only",
    "--tmpfs",
    "/tmp:rw,nosuid,nodev,mode=1777",
    "--cap-drop",
    "ALL",
    "--security-opt",
    "no-new-privileges",
]


def make_home(tmp_path, name="home") -> Path:
    home = tmp_path / name
    home.mkdir()
    os.chown(home, 1010, 1010)
    return home


# -- who and what --------------------------------------------------------------------------------
@needs_podman
def test_runs_as_editor_with_r_the_hubs_jupyterhub_and_no_sudo_or_podman(workspace_image):
    script = """
id -u; id -g; id -un; echo "HOME=$HOME"
jupyterhub --version
jupyter kernelspec list --json
Rscript -e 'cat(R.version$major, "\\n"); library(IRkernel); cat("irkernel ok\\n")'
python3 -c 'import sys; print("python", sys.version_info[0], sys.version_info[1])'
for t in sudo podman docker; do command -v $t >/dev/null && echo "FOUND $t"; done
find / -xdev -type f -perm /6000 2>/dev/null | sed 's/^/SETID /'
echo end
"""
    r = run_in(workspace_image, "bash", "-c", script, args=["--network", "none"])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:4] == ["1010", "1010", "editor", "HOME=/home/editor"]
    assert lines[4] == importlib.metadata.version("jupyterhub")  # the hub's own version
    specs = json.loads("\n".join(lines[5 : lines.index("4 ")]))["kernelspecs"]
    assert specs["ir"]["spec"]["language"] == "R"
    assert "irkernel ok" in lines and "python 3 11" in lines
    assert not [x for x in lines if x.startswith(("FOUND", "SETID"))]
    assert lines[-1] == "end"
    info = json.loads(
        subprocess.run(
            ["podman", "image", "inspect", workspace_image], capture_output=True, text=True, check=True
        ).stdout
    )[0]
    assert info["Config"]["User"] == "1010:1010"
    env = dict(e.split("=", 1) for e in info["Config"]["Env"])
    assert env["PATH"].split(":")[:2] == ["/opt/kinetic/bin", "/opt/kinetic/venv/bin"]
    assert env["KINETIC_BLANK_PROJECT"] == "/opt/kinetic/provision/blank_project"
    assert env["KINETIC_FETCH_DATA"] == "/opt/kinetic/bin/kinetic-fetch-data"
    assert not [k for k in env if any(w in k for w in ("KEY", "SECRET", "TOKEN"))]


@needs_podman
def test_r_packages_are_exactly_the_enclaves(workspace_image):
    from enclave_service.images import base_image_tag

    listing = (
        "ip <- installed.packages(); "
        "cat(sort(paste(ip[, 'Package'], ip[, 'Version'], ip[, 'LibPath'])), sep = '\\n')"
    )
    ours = run_in(workspace_image, "Rscript", "-e", listing, args=["--network", "none"])
    enclave = run_in(base_image_tag(), "Rscript", "-e", listing, args=["--network", "none"])
    assert ours.returncode == 0 and enclave.returncode == 0, ours.stderr + enclave.stderr
    assert any(line.startswith("IRkernel ") for line in ours.stdout.splitlines())
    assert ours.stdout == enclave.stdout


# -- the server: default kernel, settings, RStudio only where rserver exists ----------------------
PROBE = r"""
import json, subprocess, time, urllib.error, urllib.request
srv = subprocess.Popen(["jupyter-server", "--ServerApp.token=probe", "--ip=127.0.0.1",
                        "--port=8888", "--no-browser"],
                       stdout=subprocess.DEVNULL, stderr=open("/tmp/server.log", "w"))
# what a researcher's code can start in their kernel: a listener on a port of the workspace that
# answers every path (so a refusal below is the proxy's, not a missing page of the listener)
LISTENER = (
    "import http.server\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(b'researcher listener')\n"
    "http.server.HTTPServer(('127.0.0.1', 9123), H).serve_forever()\n"
)
listener = subprocess.Popen(["python3", "-c", LISTENER],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def call(path, method="GET", body=None, origin="http://127.0.0.1:8888"):
    req = urllib.request.Request(origin + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": "token probe"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
out = {}
try:
    for _ in range(600):
        try:
            call("/api/status"); break
        except OSError:
            time.sleep(0.1)
    else:
        raise SystemExit(open("/tmp/server.log").read())
    out["kernelspecs"] = json.loads(call("/api/kernelspecs")[1])
    out["servers"] = json.loads(call("/server-proxy/servers-info")[1])
    out["notification"] = json.loads(
        call("/lab/api/settings/@jupyterlab/apputils-extension:notification")[1])
    kernel = json.loads(call("/api/kernels", "POST", {})[1])     # a kernel nobody named
    out["kernel"] = kernel["name"]
    call("/api/kernels/" + kernel["id"], "DELETE")
    out["rstudio"] = call("/rstudio/")
    out["listener"] = call("/listener.html", origin="http://127.0.0.1:9123")  # it is up
    out["proxied"] = {
        path: call(path)
        for path in ("/proxy/9123/listener.html", "/proxy/absolute/9123/listener.html",
                     "/proxy/localhost:9123/listener.html", "/proxy/127.0.0.1:9123/listener.html")
    }
finally:
    listener.terminate()
    t0 = time.monotonic()
    srv.terminate()
    try:
        srv.wait(60)
    except subprocess.TimeoutExpired:
        srv.kill()
    out["shutdown_seconds"] = round(time.monotonic() - t0, 2)
print("PROBE " + json.dumps(out))
"""


def probe_server(image, home, extra_args=()):
    r = run_in(
        image,
        "python3",
        "-",
        input=PROBE,
        timeout=180,
        args=["-i", "--network", "none", *CONFINED, "-v", f"{home}:/home/editor", *extra_args],
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.split("PROBE ", 1)[1])


@needs_podman
def test_r_is_the_default_kernel_and_rstudio_is_hidden_without_rserver(workspace_image, tmp_path):
    out = probe_server(workspace_image, make_home(tmp_path))
    assert out["kernelspecs"]["default"] == "ir"
    assert out["kernel"] == "ir"  # a console that names no kernel gets R
    assert set(out["kernelspecs"]["kernelspecs"]) == {"ir"}  # only what the enclave runs: R
    assert [s["name"] for s in out["servers"]["server_processes"]] == []  # no RStudio tile
    assert out["rstudio"][0] == 404  # and no 500 page
    # rstudio_patch's JupyterLab overrides are installed: no news, no update checks
    props = out["notification"]["schema"]["properties"]
    assert props["fetchNews"]["default"] == "false" and props["checkForUpdates"]["default"] is False


@needs_podman
def test_rstudio_is_offered_and_answers_where_rserver_exists(workspace_image, tmp_path):
    out = probe_server(
        workspace_image, make_home(tmp_path), ["-v", f"{FAKE_RSERVER}:/usr/local/bin/rserver:ro"]
    )
    servers = {s["name"]: s for s in out["servers"]["server_processes"]}
    assert list(servers) == ["rstudio"]
    assert servers["rstudio"]["launcher_entry"]["enabled"] is True
    assert servers["rstudio"]["launcher_entry"]["title"] == "RStudio"
    status, body = out["rstudio"]
    assert status == 200 and "RStudio (test stand-in)" in body
    assert out["kernelspecs"]["default"] == "ir"


@needs_podman
def test_no_port_but_the_named_servers_is_proxied(workspace_image, tmp_path):
    """Issue 7, attack 1: a listener that a researcher's code starts in a shared workspace is not a
    page on the workspace's URL, so a co-researcher who opens it sends it nothing; RStudio still is."""
    out = probe_server(
        workspace_image, make_home(tmp_path), ["-v", f"{FAKE_RSERVER}:/usr/local/bin/rserver:ro"]
    )
    assert out["listener"] == [200, "researcher listener"]  # reachable inside the workspace …
    for path, (status, body) in out["proxied"].items():  # … but not through the workspace server
        assert status in (403, 404) and "researcher listener" not in body, (path, status)
    status, body = out["rstudio"]
    assert status == 200 and "RStudio (test stand-in)" in body
    assert [s["name"] for s in out["servers"]["server_processes"]] == ["rstudio"]


@needs_podman
def test_entry_command_picks_the_landing_page_and_hands_on_its_arguments(workspace_image, tmp_path):
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "jupyterhub-singleuser").write_text('#!/bin/sh\necho "url=$JUPYTERHUB_DEFAULT_URL args=$*"\n')
    (fake / "jupyterhub-singleuser").chmod(0o755)
    path = "/fake:/opt/kinetic/bin:/opt/kinetic/venv/bin:/usr/local/bin:/usr/bin:/bin"
    base = ["--network", "none", "-v", f"{fake}:/fake:ro", "-e", f"PATH={path}"]
    cmd = ["kinetic-workspace", "--ip=0.0.0.0", "--port=8888"]
    lab = run_in(workspace_image, *cmd, args=base)
    assert lab.stdout.strip() == "url=/lab args=--ip=0.0.0.0 --port=8888", lab.stderr
    rstudio = run_in(workspace_image, *cmd, args=[*base, "-v", f"{FAKE_RSERVER}:/usr/local/bin/rserver:ro"])
    assert rstudio.stdout.strip() == "url=/rstudio args=--ip=0.0.0.0 --port=8888", rstudio.stderr
    preset = run_in(workspace_image, *cmd, args=[*base, "-e", "JUPYTERHUB_DEFAULT_URL=/tree"])
    assert preset.stdout.strip().startswith("url=/tree ")
    # the real command is there, and the image's default command is the entry command
    info = json.loads(
        subprocess.run(
            ["podman", "image", "inspect", workspace_image], capture_output=True, text=True, check=True
        ).stdout
    )[0]
    assert info["Config"]["Cmd"] == ["/opt/kinetic/bin/kinetic-workspace", "--ip=0.0.0.0", "--port=8888"]
    assert (
        run_in(workspace_image, "jupyterhub-singleuser", "--version", args=["--network", "none"]).returncode
        == 0
    )


# -- provisioning inside the container, as uid 1010 ------------------------------------------------
def bridge_gateway() -> str:
    r = subprocess.run(
        ["podman", "network", "inspect", "podman"], capture_output=True, text=True, check=False
    )
    try:
        return json.loads(r.stdout)[0]["subnets"][0]["gateway"]
    except (ValueError, LookupError, TypeError):
        return "10.88.0.1"


@pytest.fixture(scope="module")
def reachable_standin(tmp_path_factory):
    """A Kinetic stand-in a container can reach: on all addresses, its data URLs on the bridge."""
    if not podman_ok():
        pytest.skip("podman and runc are required")
    state = tmp_path_factory.mktemp("standin-for-image")
    port = free_port()
    proc = start_process(
        [
            sys.executable,
            "-m",
            "kinetic_auth.standin.app",
            "--ip",
            "0.0.0.0",
            "--port",
            str(port),
            "--public-url",
            f"http://{bridge_gateway()}:{port}",
            "--state-dir",
            str(state),
        ],
        state / "standin.log",
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/accounts/login", proc=proc)
        yield Standin(f"http://127.0.0.1:{port}", state, proc), f"http://{bridge_gateway()}:{port}"
    finally:
        stop_process(proc)


@needs_podman
def test_provisioning_inside_the_container_seeds_the_home_and_keeps_it(
    workspace_image, tmp_path, reachable_standin
):
    standin, inner_url = reachable_standin
    s = requests.Session()
    standin.sign_in(s, ADA)
    key = s.get(f"{standin.browser_url}/api/v1/researcher/analysis/101").json()["api_key"]
    home = make_home(tmp_path)
    env = {
        **os.environ,
        "ANALYSIS_ID": "101",
        "ANALYSIS_API_KEY": key,
        "KINETIC_URL": inner_url,
        "CUTOFF_DATE": "2026-03-01",
    }
    # -e NAME (no value): podman takes the value from its own environment, so the key is never in argv
    argv = [
        "podman",
        "--runtime",
        "runc",
        "run",
        "--rm",
        "--ulimit",
        "nofile=20000:20000",
        "--ulimit",
        "nproc=1024:1024",
        *CONFINED,
        "-v",
        f"{home}:/home/editor",
        "-e",
        "ANALYSIS_ID",
        "-e",
        "ANALYSIS_API_KEY",
        "-e",
        "KINETIC_URL",
        "-e",
        "CUTOFF_DATE",
        workspace_image,
        "bash",
        "/opt/kinetic/provision/provision.sh",
    ]
    assert key not in " ".join(argv)
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "::step seeded the blank project (cutoff 2026-03-01)" in first.stdout
    assert "::step synthetic data ready" in first.stdout
    main = home / "kinetic" / "main.r"
    assert 'cutoff_date = "2026-03-01"' in main.read_text().splitlines()
    assert (home / ".Renviron").read_text() == f"ANALYSIS_API_KEY={key}\n"
    data = home / "kinetic" / "data" / "responses.csv"
    assert data.read_text().startswith("student_id,course,week,")
    for p in (home, main, data, home / ".Renviron"):
        assert (p.stat().st_uid, p.stat().st_gid) == (1010, 1010), p
    main.write_text(main.read_text() + "# the researcher's own line\n")
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert second.returncode == 0, second.stderr
    assert "::step kept the existing project" in second.stdout
    assert main.read_text().endswith("# the researcher's own line\n")
    # the seeded project runs in the image with the enclave's R, as the researcher
    run = run_in(
        workspace_image,
        "Rscript",
        "kinetic/main.r",
        args=["--network", "none", *CONFINED, "-v", f"{home}:/home/editor", "-w", "/home/editor"],
    )
    assert run.returncode == 0, run.stderr
    assert (home / "kinetic" / "output" / "summary_by_course.csv").exists()


# -- the tag ----------------------------------------------------------------------------------------
def test_tag_is_cheap_and_stable_and_needs_no_podman(monkeypatch):
    t0 = time.monotonic()
    tag = workspace_image_tag()
    assert time.monotonic() - t0 < 1.0
    assert tag.startswith("localhost/kinetic-workspace:") and len(tag.split(":")[1]) == 24
    monkeypatch.setenv("PATH", "/nonexistent")  # no podman, no pip: still the same tag
    assert workspace_image_tag() == tag


def test_tag_changes_when_any_input_changes(monkeypatch, tmp_path):
    base, containerfile, pins, files = builder._inputs()
    fp = builder.fingerprint(base, containerfile, pins, files)
    assert builder.fingerprint(base, containerfile, list(pins), dict(files)) == fp
    assert builder.fingerprint(base + "x", containerfile, pins, files) != fp
    assert builder.fingerprint(base, containerfile + "# x\n", pins, files) != fp
    assert builder.fingerprint(base, containerfile, [*pins[:-1], pins[-1] + ".post1"], files) != fp
    changed = dict(files)
    data, mode = changed["opt/provision/provision.sh"]
    changed["opt/provision/provision.sh"] = (data + b"\n", mode)
    assert builder.fingerprint(base, containerfile, pins, changed) != fp
    changed["opt/provision/provision.sh"] = (data, 0o644)  # a mode is an input too
    assert builder.fingerprint(base, containerfile, pins, changed) != fp
    # through the real sources: an edited copied file gives a new tag
    tag = workspace_image_tag()
    here = tmp_path / "image"
    shutil.copytree(builder.HERE, here)
    monkeypatch.setattr(builder, "HERE", here)
    assert workspace_image_tag() == tag
    (here / "files" / "kinetic-workspace").write_text("#!/bin/sh\nexec true\n")
    assert workspace_image_tag() != tag


def test_inputs_are_what_the_image_needs_and_nothing_of_the_hub():
    files = builder.context_files()
    lib = sorted(k for k in files if k.startswith("opt/lib/"))
    assert "opt/lib/kinetic_spawner/fetch_data.py" in lib
    assert not any(k.endswith(("spawner.py", "authenticator.py", "handlers.py")) for k in lib)
    pins = dict(p.split("==") for p in builder.requirement_pins() if "==" in p)
    for name in builder.TOP_LEVEL:
        assert pins[name] == importlib.metadata.version(name)


def test_another_python_is_refused_in_words():
    with pytest.raises(builder.ImageBuildError, match=r"Python 3\.12.*Python 3\.11"):
        builder.check_python((3, 12))
    builder.check_python((3, 11))
