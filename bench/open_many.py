"""N analyses opened at the same moment (issue 6): does every workspace start, how long until the
last one answers, and does the hub stay responsive meanwhile? All measured in one run.

A Kinetic stand-in seeded with N researchers, one analysis each; every researcher signs in (at
Kinetic and at the hub) first. Then all N open /hub/analysis/<id> at once, as a browser would
(the page, its progress event stream, the page again once ready, the workspace), each following
until its workspace answers through the proxy. A thread samples the hub API
(`GET /hub/api/` with the operator token, through the proxy, every 50 ms) for a few seconds
before the opens (idle) and for as long as they last (loaded). CPU time of the hub process, of
the podman commands it runs (its reaped children), of the proxy and of the workspace containers
is read from /proc over the same window, to say who took the cores. At the end every workspace is
stopped (bounded) and anything of this bench's hub still in podman is removed.

    .venv/bin/python -m bench open_many [N]      (N = 30 by default)

Targets (issue 6): N/N open; hub API p99 while they start <= 250 ms.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from kinetic_auth.standin.seed import default_seed
from tests.hub import container_instance, remove_containers, running_hub
from tests.support import running_standin

IDLE_SECONDS = float(os.environ.get("BENCH_IDLE_SECONDS", "5"))
SAMPLE_EVERY = 0.05
OPEN_TIMEOUT = float(os.environ.get("BENCH_OPEN_TIMEOUT", "600"))  # = the config's start_timeout
# 30 workspaces x the default 2g would promise more than this 24 GiB machine has
MEMORY = os.environ.get("BENCH_WORKSPACE_MEMORY", "600m")
FIRST_ANALYSIS = 5001
CLK_TCK = os.sysconf("SC_CLK_TCK")


def seed(n: int) -> dict:
    """The default seed plus n researchers with one analysis of their own each."""
    base = default_seed()
    people, analyses = [], []
    for i in range(n):
        who = str(uuid.UUID(int=0x6F1C2A8E_0B1D_4C3E_9A55_BE0C00000000 + i))
        people.append(
            {
                "uuid": who,
                "first_name": f"Bench{i}",
                "last_name": "Researcher",
                "role": "researcher",
                "email": f"bench{i}@example.org",
            }
        )
        analyses.append(
            {
                "id": FIRST_ANALYSIS + i,
                "title": f"Bench analysis {i}",
                "description": "Opened at the same moment as the others.",
                "researchers": [who],
                "study_ids": [11],
            }
        )
    return {"researchers": base["researchers"] + people, "analyses": base["analyses"] + analyses}


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * len(xs) + 0.5) - 1))]  # nearest rank


class Sampler(threading.Thread):
    """GET url every SAMPLE_EVERY s (a slow answer delays the next one); (start time, seconds)."""

    def __init__(self, url: str, token: str):
        super().__init__(daemon=True)
        self.url, self.token = url, token
        self.samples: list[tuple[float, float]] = []
        self.errors = 0
        self.done = threading.Event()

    def run(self):
        s = requests.Session()
        s.headers["Authorization"] = f"token {self.token}"
        while not self.done.is_set():
            t0 = time.monotonic()
            try:
                ok = s.get(self.url, timeout=30).status_code == 200
            except requests.RequestException:
                ok = False
            took = time.monotonic() - t0
            if ok:
                self.samples.append((t0, took))
            else:
                self.errors += 1
            self.done.wait(max(0.0, SAMPLE_EVERY - took))

    def between(self, a: float, b: float) -> list[float]:
        return [took for t, took in self.samples if a <= t < b]


# -- who took the CPU ---------------------------------------------------------------------------
def _stat(pid) -> tuple[str, list[str]] | None:
    """(command name, fields from the 3rd on) of /proc/<pid>/stat."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.find("(") + 1 : raw.rfind(")")], raw[raw.rfind(")") + 2 :].split()


def _cmdline(pid) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = f[3] + f[4]
    return (sum(f[:8]) - idle) / CLK_TCK, sum(f[:8]) / CLK_TCK


class CpuWatch(threading.Thread):
    """Every 0.5 s: CPU seconds (own + reaped children) of the hub, the proxy and every process
    below a conmon of this hub's containers (the workspaces and their provisioning). A process's
    last reading counts; what lives less than 0.5 s is caught in its parent's reaped time."""

    def __init__(self, hub_pid: int, instance: str):
        super().__init__(daemon=True)
        self.hub_pid, self.instance = hub_pid, instance
        self.first: dict[tuple, float] = {}
        self.last: dict[tuple, tuple[str, float]] = {}
        self.done = threading.Event()

    def scan(self):
        procs, comms = {}, {}
        for d in os.listdir("/proc"):
            if d.isdigit() and (got := _stat(d)) is not None:
                comms[int(d)], procs[int(d)] = got
        conmons = {pid for pid, comm in comms.items() if comm == "conmon"}
        ours_conmon = {pid for pid in conmons if f"kinetic-{self.instance}-" in _cmdline(pid)}
        for pid, st in procs.items():
            key = (pid, st[19])  # pid + start time
            if pid == self.hub_pid:
                groups = {
                    ("hub", self._cpu(st[11:13])),
                    ("podman CLI (hub's children)", self._cpu(st[13:15])),
                }
            elif st[1] == str(self.hub_pid) and comms[pid] == "node":
                groups = {("proxy", self._cpu(st[11:15]))}
            else:
                p, seen = pid, 0
                while p > 1 and p not in conmons and seen < 50:
                    p, seen = int(procs[p][1]) if p in procs else 0, seen + 1
                if p in conmons and p not in ours_conmon:
                    groups = {("other:containers of other hubs/tests", self._cpu(st[11:13]))}
                elif p in ours_conmon:
                    # own time only, plus the reaped time of conmon (a container's init ends up there)
                    groups = {
                        ("workspace containers", self._cpu(st[11:15] if pid in ours_conmon else st[11:13]))
                    }
                else:
                    comm = "kworker" if comms[pid].startswith("kworker") else comms[pid]
                    groups = {(f"other:{comm}", self._cpu(st[11:13]))}
            for group, cpu in groups:
                k = (*key, group)
                self.first.setdefault(k, cpu if self.started_at is None else 0.0)
                self.last[k] = (group, cpu)

    @staticmethod
    def _cpu(fields) -> float:
        return sum(int(x) for x in fields) / CLK_TCK

    def run(self):
        self.started_at = None
        self.scan()
        self.started_at = time.monotonic()
        while not self.done.wait(0.5):
            self.scan()

    def totals(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for k, (group, cpu) in self.last.items():
            out[group] = out.get(group, 0.0) + cpu - self.first.get(k, 0.0)
        return out


# -- the bench ------------------------------------------------------------------------------------
def browser_like(s: requests.Session) -> requests.Session:
    """A browser sends a GET again when a kept-alive connection turns out closed as it sends
    (the proxy closes connections idle for 5 s: configurable-http-proxy's keepAliveTimeout);
    requests does not, so these sessions signed in before the idle phase would fail at random."""
    s.mount(
        "http://",
        HTTPAdapter(
            max_retries=Retry(
                total=2, connect=2, read=1, status=0, allowed_methods=["GET"], raise_on_status=False
            )
        ),
    )
    return s


def open_like_a_browser(hub, s: requests.Session, analysis_id: int) -> tuple[bool, str]:
    """What the analysis page does in a browser: load it, follow its progress event stream (no
    polling), load it again once ready (→ 302 to the workspace) and load the workspace."""
    url = f"{hub.url}/hub/analysis/{analysis_id}"
    r = s.get(url, allow_redirects=False, timeout=60)
    if r.status_code == 200:
        events = hub.progress_events(s, analysis_id, timeout=OPEN_TIMEOUT)
        if not events or not events[-1].get("ready"):
            return False, f"progress ended with {events[-1] if events else 'nothing'}"
        r = s.get(url, allow_redirects=False, timeout=60)
    if r.status_code != 302 or "/user/" not in r.headers.get("Location", ""):
        return False, f"{r.status_code} {r.text[:200]!r}"
    where = r.headers["Location"]
    page = s.get(hub.url + where if where.startswith("/") else where, timeout=60)
    return page.status_code == 200, f"workspace answered {page.status_code}"


def open_one(hub, s: requests.Session, analysis_id: int, go: threading.Barrier, result: dict):
    go.wait()
    t0 = time.monotonic()
    try:
        ok, why = open_like_a_browser(hub, s, analysis_id)
    except Exception as e:  # noqa: BLE001 (a failed open is a result, not a crash of the bench)
        ok, why = False, f"{type(e).__name__}: {str(e)[:200]}"
    result[analysis_id] = (ok, time.monotonic() - t0, why)


LOG_LINE = re.compile(r"^\[\w (\S+ \S+) JupyterHub log:\d+\] (\d+) (\w+) (\S+) .*\(([^@]*)@\S+\) ([\d.]+)ms$")


def hub_requests(log: str, start: float, end: float) -> list[tuple[str, str, float]]:
    """(kind, who, ms) of every request the hub logged between two wall-clock times: its own
    view of how long each took, from reading the request to writing the answer."""
    out = []
    for line in log.splitlines():
        m = LOG_LINE.match(line)
        if not m:
            continue
        t = datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S.%f").timestamp()
        if start <= t < end:
            uri = m[4].split("?")[0]
            kind = re.sub(r"/(analysis|users|servers)/[^/]+", r"/\1/*", uri)
            out.append((f"{m[3]} {kind}", m[5], float(m[6])))
    return out


def main(argv=()):
    n = int(argv[0]) if argv else 30
    from kinetic_spawner.image import ensure_workspace_image

    asyncio.run(ensure_workspace_image())  # built before anything is timed (bench.image measures it)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "standin").mkdir()
        seed_file = tmp / "seed.json"
        seed_file.write_text(json.dumps(seed(n)))
        people = seed(n)["analyses"][-n:]
        hub_dir = tmp / "hub"
        env = {"KINETIC_WORKSPACE_MEMORY": MEMORY}
        try:
            with (
                running_standin(tmp / "standin", seed_file) as standin,
                running_hub(hub_dir, standin, env_overrides=env) as hub,
            ):
                sessions = {a["id"]: browser_like(hub.browser_session(a["researchers"][0])) for a in people}
                sampler = Sampler(f"{hub.url}/hub/api/", hub.token)
                cpu = CpuWatch(hub.proc.pid, hub.instance)
                wall_idle = time.time()
                sampler.start()
                time.sleep(IDLE_SECONDS)
                idle_end, wall_go = time.monotonic(), time.time()
                go = threading.Barrier(n + 1)
                results: dict[int, tuple] = {}
                threads = [
                    threading.Thread(target=open_one, args=(hub, sessions[a], a, go, results))
                    for a in sessions
                ]
                for t in threads:
                    t.start()
                busy0 = machine_busy()
                cpu.start()
                go.wait()
                t_go = time.monotonic()
                for t in threads:
                    t.join()
                t_end, wall_end = time.monotonic(), time.time()
                busy1 = machine_busy()
                cpu.done.set()
                sampler.done.set()
                cpu.join()
                sampler.join()
                t0 = time.monotonic()
                hub.stop_all_workspaces()
                stopped_in = time.monotonic() - t0
                left = hub.api("GET", "/users", params={"state": "active"}).json()
                hub_log = hub.log()  # read before the temporary directory goes
        finally:
            remove_containers(container_instance(hub_dir))  # this bench's own, if any are left

    ok = [r for r in results.values() if r[0]]
    idle = sampler.between(0, idle_end)
    loaded = sampler.between(t_go, t_end)
    wall = t_end - t_go
    print(
        f"open_many: {n} analyses opened at the same moment, {n} researchers "
        f"(KINETIC_WORKSPACE_MEMORY={MEMORY} per workspace)"
    )
    print(f"opens that succeeded: {len(ok)}/{n}   (target {n}/{n})")
    if ok:
        times = sorted(r[1] for r in ok)
        print(
            f"time to the last workspace answering: {times[-1]:.1f} s  "
            f"(first {times[0]:.1f} s, median {statistics.median(times):.1f} s)"
        )
    for aid, (good, took, why) in sorted(results.items()):
        if not good:
            print(f"  analysis {aid} failed after {took:.1f} s: {why}")
    for label, xs in (("idle", idle), ("loaded", loaded)):
        if xs:
            print(
                f"hub API GET /hub/api/ {label:6s}: p50 {statistics.median(xs) * 1000:.0f} ms, "
                f"p99 {percentile(xs, 99) * 1000:.0f} ms, max {max(xs) * 1000:.0f} ms ({len(xs)} samples)"
            )
    if loaded:
        p99 = percentile(loaded, 99) * 1000
        print(
            f"hub API p99 while they start: {p99:.0f} ms (target <= 250 ms: {'met' if p99 <= 250 else 'MISSED'})"
            + (f"; {sampler.errors} requests failed" if sampler.errors else "")
        )
    # the hub's own view of the same GET /hub/api/ (from reading the request to the answer) and
    # what else it served while they started
    served = {
        label: [
            ms
            for kind, who, ms in hub_requests(hub_log, a, b)
            if kind == "GET /hub/api/" and who == "test-operator"
        ]
        for label, a, b in (("idle", wall_idle, wall_go), ("loaded", wall_go, wall_end))
    }
    print(
        "  the hub's own time for them: "
        + "; ".join(
            f"{label} p50 {statistics.median(ms):.0f} ms, p99 {percentile(ms, 99):.0f} ms"
            for label, ms in served.items()
            if ms
        )
    )
    mix: dict[str, list[float]] = {}
    for kind, _who, ms in hub_requests(hub_log, wall_go, wall_end):
        mix.setdefault(kind, []).append(ms)
    print(
        f"  requests the hub served while they started ({sum(map(len, mix.values()))}): "
        + ", ".join(
            f"{k} x{len(v)} (p50 {statistics.median(v):.0f} ms)"
            for k, v in sorted(mix.items(), key=lambda kv: -len(kv[1]))[:6]
        )
    )
    used = busy1[0] - busy0[0]
    totals = cpu.totals()
    shares = {k: v for k, v in totals.items() if not k.startswith("other:")}
    others = sorted(((k[6:], v) for k, v in totals.items() if k.startswith("other:")), key=lambda kv: -kv[1])
    print(
        f"CPU while they started ({wall:.0f} s x {os.cpu_count()} cores): machine busy {used:.0f} s "
        f"({used / wall / os.cpu_count():.0%}); "
        + ", ".join(f"{k} {v:.1f} s" for k, v in sorted(shares.items(), key=lambda kv: -kv[1]))
        + f"; everything else {max(0.0, used - sum(shares.values())):.0f} s (this machine's other users, "
        f"short-lived processes; top: {', '.join(f'{k} {v:.1f} s' for k, v in others[:5])})"
    )
    print(
        f"stopped every workspace in {stopped_in:.1f} s ({len(left)} users still active after the bounded wait)"
    )
    if len(ok) < n:
        print("hub log (tail):\n" + "\n".join(hub_log.splitlines()[-30:]))


if __name__ == "__main__":
    main(sys.argv[1:])
