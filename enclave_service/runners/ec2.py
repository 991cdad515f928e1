"""EC2Runner: one ephemeral EC2 instance per run, docker on it, the same ContainerSpec.

The instance sits in a private subnet (no public IP), requires IMDSv2 with a hop limit of
1 and gets no instance profile, so a run has nothing to steal even if it escaped its
``--network none``. Its user data holds no secret, only a dead man's switch (``shutdown -h``
with ``InstanceInitiatedShutdownBehavior=terminate``) so it ends itself if the hub never
returns. The hub reaches it over SSH with a *pinned* host key (``host_key_source``), and logs in
with a key pair made for that run alone (W3: the original shared one SSH key across every
instance): only the public half travels, in the user data; the private half stays with the
service (``ssh_key_dir``, mode 0600) and is deleted when the instance is terminated.

The instance is terminated on every outcome (W7): after finalize (success or failure),
after a time-out, and when any step raises. It is found again by its tags
(``kinetic.run_id``, ``kinetic.hub``) after a hub restart; ``reap_orphans`` ends the rest.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import math
import os
import posixpath
import shlex
import tarfile
from dataclasses import replace
from pathlib import Path

import asyncssh
from aiobotocore.session import get_session
from traitlets import Any, Bool, Dict, Float, Int, List, Unicode

from ..container import APP, ContainerSpec, parse_inspect, stage_job
from . import JobState, RunJob, Runner, RunnerError, RunResult, truncate_logs, with_backoff

LIVE_STATES = ["pending", "running", "stopping", "stopped"]
BEGIN_KEYS, END_KEYS = "-----BEGIN SSH HOST KEY KEYS-----", "-----END SSH HOST KEY KEYS-----"


def host_key_from_console(text: str, prefer=("ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa")):
    """cloud-init prints the instance's host public keys between BEGIN/END SSH HOST KEY KEYS
    on the serial console; only the instance (and EC2) can write there."""
    if BEGIN_KEYS not in text:
        return None
    block = text.split(BEGIN_KEYS, 1)[1].split(END_KEYS, 1)[0]
    keys = {p[0]: f"{p[0]} {p[1]}" for p in (ln.split() for ln in block.splitlines()) if len(p) >= 2}
    return next((keys[t] for t in prefer if t in keys), None)


async def console_host_key(runner: EC2Runner, instance: dict) -> str:
    """Production path: read the host key from the console output, polling with backoff
    (it appears a minute or two after boot)."""

    async def once():
        async with runner._ec2() as ec2:
            out = (await ec2.get_console_output(InstanceId=instance["InstanceId"])).get("Output", "")
        try:
            out = base64.b64decode(out, validate=True).decode("utf-8", "replace")
        except ValueError:
            pass
        key = host_key_from_console(out)
        if not key:
            raise RunnerError("host key not yet on the instance console")
        return key

    return await with_backoff(once, attempts=10, base=5, cap=30, log=runner.log)


def _terminates_on_error(step):
    """W7: whatever goes wrong in a step, the instance does not outlive it."""

    @functools.wraps(step)
    async def wrapper(self, job, *a, **kw):
        try:
            return await step(self, job, *a, **kw)
        except Exception:
            self.log.exception("run %s: %s failed; terminating its instance", job.run_id, step.__name__)
            await asyncio.shield(self._terminate_instance(job))
            raise

    return wrapper


class EC2Runner(Runner):
    region = Unicode("eu-west-2", config=True, help="AWS region of the enclave hosts.")
    endpoint_url = Unicode(
        None, allow_none=True, config=True, help="EC2 endpoint override (tests point it at moto)."
    )
    image_id = Unicode("", config=True, help="AMI with docker installed (or use launch_template_id).")
    launch_template_id = Unicode("", config=True, help="Launch template; takes precedence over image_id.")
    instance_type = Unicode("t3.medium", config=True, help="Instance type of a run host.")
    subnet_id = Unicode("", config=True, help="PRIVATE subnet for run hosts (no public IP is ever assigned).")
    security_group_ids = List(
        Unicode(), config=True, help="Security groups: SSH from the hub only, no other ingress."
    )
    key_name = Unicode("", config=True, help="EC2 key pair whose public key the hub's SSH key matches.")
    hub_name = Unicode("local", config=True, help="Value of the kinetic.hub tag.")
    extra_tags = Dict(config=True, help="More tags on every run host (e.g. cost centre).")
    ssh_username = Unicode("admin", config=True, help="SSH user on the run host.")
    ssh_port = Int(22, config=True, help="SSH port on the run host.")
    ssh_client_key_path = Unicode(
        "",
        config=True,
        help="""Private key the hub authenticates with
        when ``per_run_ssh_keys`` is off (one key for every run host: not recommended).""",
    )
    per_run_ssh_keys = Bool(
        True,
        config=True,
        help="""Make an SSH key pair for each run: its public
        key is written to the run host's authorized_keys by the user data, its private key is kept in
        ``ssh_key_dir`` only until the host is terminated. A key stolen from one host opens no other.""",
    )
    ssh_key_dir = Unicode(
        "state/enclave/run-ssh-keys",
        config=True,
        help="""Folder (made 0700) for the
        private halves of per-run SSH keys; kept on disk so a restarted service can reach its hosts.""",
    )
    host_key_source = Any(
        console_host_key,
        config=True,
        help="""async callable(runner, instance) -> 'type base64' host public key to pin.
        Default: read from the instance's console output (cloud-init prints it there).""",
    )
    connect_address = Any(
        None, config=True, help="callable(instance) -> (host, port); default: the private IP and ssh_port."
    )
    docker_command = List(["sudo", "-n", "docker"], config=True, help="How docker is run remotely.")
    remote_sudo = List(["sudo", "-n"], config=True, help="Prefix for remote commands needing root.")
    docker_runtime = Unicode(
        None,
        allow_none=True,
        config=True,
        help="--runtime for docker (e.g. runsc for gVisor); None = default.",
    )
    remote_root = Unicode("/var/lib/kinetic/runs", config=True, help="Where run files live remotely.")
    image_transfer = Unicode(
        "load",
        config=True,
        help="'load': stream `podman save` into `docker load` over SSH; 'none': the image is "
        "already on the host (AMI or private registry).",
    )
    podman = Unicode("podman", config=True, help="Local podman, for `podman save`.")
    poll_interval = Float(5.0, config=True, help="Seconds between status checks in wait().")
    boot_timeout = Float(600.0, config=True, help="Seconds an instance may take to be reachable.")
    stop_grace_seconds = Int(10, config=True, help="SIGTERM-to-SIGKILL grace when stopping a run.")
    self_destruct_margin_minutes = Int(
        30, config=True, help="The host powers itself off this long after wall_seconds."
    )

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._session = get_session()
        self._conns: dict[str, asyncssh.SSHClientConnection] = {}
        self._stopped_for_time: set[str] = set()

    # ---- AWS -----------------------------------------------------------------------
    def _ec2(self):
        return self._session.create_client("ec2", region_name=self.region, endpoint_url=self.endpoint_url)

    def tags(self, job: RunJob) -> list[dict]:
        tags = {
            "Application": APP,
            "kinetic.run_id": job.run_id,
            "kinetic.hub": self.hub_name,
            "Name": f"kinetic-run-{job.run_id}",
            **self.extra_tags,
        }
        return [{"Key": k, "Value": str(v)} for k, v in tags.items()]

    def _key_path(self, job: RunJob) -> Path:
        return Path(self.ssh_key_dir) / f"{job.run_id}.key"

    def run_key(self, job: RunJob, create: bool = False):
        """This run's SSH client key (made on first use when ``create``), or None."""
        path = self._key_path(job)
        if path.exists():
            return asyncssh.read_private_key(str(path))
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = asyncssh.generate_private_key("ssh-ed25519", comment=f"kinetic-run-{job.run_id}")
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key())
        os.replace(tmp, path)
        return key

    def user_data(self, job: RunJob) -> str:
        minutes = math.ceil(job.limits.wall_seconds / 60) + self.self_destruct_margin_minutes
        lines = [
            "#!/bin/sh",
            "# Kinetic enclave run host. Holds no secret (user data is readable via IMDS",
            "# and DescribeInstanceAttribute). Dead man's switch: power off, which",
            "# terminates this instance, even if the hub never comes back.",
            f"shutdown -h +{minutes}",
        ]
        if self.per_run_ssh_keys:
            pub = self.run_key(job, create=True).export_public_key().decode().strip()
            user = shlex.quote(self.ssh_username)
            lines += [
                "# The only key that may log in: this run's (a public key, not a secret).",
                f"home=$(getent passwd {user} | cut -d: -f6)",
                'install -d -m 700 "$home/.ssh"',
                f"printf '%s\\n' {shlex.quote(pub)} > \"$home/.ssh/authorized_keys\"",
                f'chmod 600 "$home/.ssh/authorized_keys"; chown -R {user}: "$home/.ssh"',
            ]
        return "\n".join(lines) + "\n"

    def launch_params(self, job: RunJob) -> dict:
        params = {
            "MinCount": 1,
            "MaxCount": 1,
            "InstanceType": self.instance_type,
            "ClientToken": f"kinetic-{self.hub_name}-{job.run_id}"[:64],  # idempotent launch
            "NetworkInterfaces": [
                {
                    "DeviceIndex": 0,
                    "SubnetId": self.subnet_id,
                    "Groups": list(self.security_group_ids),
                    "AssociatePublicIpAddress": False,
                    "DeleteOnTermination": True,
                }
            ],
            "MetadataOptions": {
                "HttpTokens": "required",
                "HttpEndpoint": "enabled",
                "HttpPutResponseHopLimit": 1,
            },
            "InstanceInitiatedShutdownBehavior": "terminate",
            "UserData": self.user_data(job),
            "TagSpecifications": [
                {"ResourceType": r, "Tags": self.tags(job)} for r in ("instance", "volume")
            ],
        }
        if self.launch_template_id:
            params["LaunchTemplate"] = {"LaunchTemplateId": self.launch_template_id}
        else:
            params["ImageId"] = self.image_id
        if self.key_name:
            params["KeyName"] = self.key_name
        return params

    async def find_instance(self, job: RunJob) -> dict | None:
        filters = [
            {"Name": "tag:kinetic.run_id", "Values": [job.run_id]},
            {"Name": "tag:kinetic.hub", "Values": [self.hub_name]},
            {"Name": "instance-state-name", "Values": LIVE_STATES},
        ]
        async with self._ec2() as ec2:
            resp = await ec2.describe_instances(Filters=filters)
        found = [i for r in resp["Reservations"] for i in r["Instances"]]
        return found[0] if found else None

    async def _launch(self, job: RunJob) -> dict:
        inst = await self.find_instance(job)
        if inst is None:
            async with self._ec2() as ec2:
                inst = (await ec2.run_instances(**self.launch_params(job)))["Instances"][0]
            self.log.info("run %s: launched %s", job.run_id, inst["InstanceId"])
        deadline = asyncio.get_running_loop().time() + self.boot_timeout
        while inst["State"]["Name"] != "running" or not inst.get("PrivateIpAddress"):
            if asyncio.get_running_loop().time() > deadline:
                raise RunnerError(f"instance {inst['InstanceId']} not running after {self.boot_timeout}s")
            await asyncio.sleep(min(self.poll_interval, 5))
            inst = await self.find_instance(job)
            if inst is None:
                raise RunnerError("the run host disappeared while booting")
        return inst

    async def _terminate_instance(self, job: RunJob) -> None:
        conn = self._conns.pop(job.run_id, None)
        if conn is not None:
            conn.close()
        inst = await with_backoff(lambda: self.find_instance(job), log=self.log, retry_on=(Exception,))
        if inst is not None:
            async with self._ec2() as ec2:
                await ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])
            self.log.info("run %s: terminated %s", job.run_id, inst["InstanceId"])
        # the host is gone, so is any use for its key
        self._key_path(job).unlink(missing_ok=True)

    async def reap_orphans(self, active_run_ids: set[str]) -> list[str]:
        """Terminate this hub's run hosts whose run the service no longer tracks."""
        filters = [
            {"Name": "tag:kinetic.hub", "Values": [self.hub_name]},
            {"Name": "tag:Application", "Values": [APP]},
            {"Name": "instance-state-name", "Values": LIVE_STATES},
        ]
        async with self._ec2() as ec2:
            resp = await ec2.describe_instances(Filters=filters)
            orphans = [
                i["InstanceId"]
                for r in resp["Reservations"]
                for i in r["Instances"]
                if {t["Key"]: t["Value"] for t in i.get("Tags", [])}.get("kinetic.run_id")
                not in active_run_ids
            ]
            if orphans:
                await ec2.terminate_instances(InstanceIds=orphans)
        return orphans

    # ---- SSH -----------------------------------------------------------------------
    async def _connect(self, job: RunJob, inst: dict | None = None):
        conn = self._conns.get(job.run_id)
        if conn is not None and not conn.is_closed():
            return conn
        inst = inst or await self.find_instance(job)
        if inst is None:
            raise RunnerError(f"run {job.run_id}: no run host")
        host, port = (
            self.connect_address(inst) if self.connect_address else (inst["PrivateIpAddress"], self.ssh_port)
        )
        key = (await self.host_key_source(self, inst)).strip()
        pattern = host if port == 22 else f"[{host}]:{port}"
        known = asyncssh.import_known_hosts(f"{pattern} {key}\n")  # pinned, never None
        run_key = self.run_key(job) if self.per_run_ssh_keys else None
        if run_key is not None:
            client_keys = [run_key]
        elif self.ssh_client_key_path:
            client_keys = [self.ssh_client_key_path]
        else:
            raise RunnerError(f"run {job.run_id}: no SSH key to reach its host")

        async def once():
            return await asyncssh.connect(
                host, port, username=self.ssh_username, known_hosts=known, client_keys=client_keys
            )

        # Retry only while sshd is coming up; a host key mismatch fails at once, loudly.
        conn = await with_backoff(
            once, attempts=6, base=1, cap=15, log=self.log, retry_on=(OSError, asyncssh.ConnectionLost)
        )
        self._conns[job.run_id] = conn
        return conn

    async def _sh(self, job: RunJob, cmd: list[str] | str, check=True, encoding="utf-8"):
        """Run a remote command (argv, quoted here; or a ready shell string)."""
        conn = await self._connect(job)
        line = cmd if isinstance(cmd, str) else shlex.join(cmd)
        res = await conn.run(line, check=False, encoding=encoding, stdin=asyncssh.DEVNULL)
        if check and res.exit_status != 0:
            err = res.stderr if isinstance(res.stderr, str) else (res.stderr or b"").decode(errors="replace")
            raise RunnerError(
                f"remote command {line[:80]!r} failed ({res.exit_status}): {err.strip()[-500:]}"
            )
        return res

    def remote_job(self, job: RunJob) -> RunJob:
        """The job as seen on the run host: same everything, remote paths."""
        base = posixpath.join(self.remote_root, job.run_id)
        return replace(
            job, code_dir=Path(base, "code"), data_dir=Path(base, "data"), output_dir=Path(base, "output")
        )

    def create_argv(self, job: RunJob) -> list[str]:
        spec = ContainerSpec.from_job(self.remote_job(job), hub=self.hub_name)
        return spec.create_argv("docker", list(self.docker_command), self.docker_runtime)

    async def _docker(self, job, *args, check=True):
        return await self._sh(job, list(self.docker_command) + list(args), check=check)

    async def _inspect(self, job: RunJob):
        res = await self._docker(job, "container", "inspect", job.container_name, check=False)
        if res.exit_status != 0:
            return None
        data = json.loads(res.stdout or "[]")
        return parse_inspect(data[0]) if data else None

    # ---- the executor interface -----------------------------------------------------
    @_terminates_on_error
    async def prepare(self, job: RunJob) -> None:
        await asyncio.to_thread(stage_job, job, False)  # mountpoints only; ownership is remote
        inst = await self._launch(job)
        await self._connect(job, inst)
        if await self._inspect(job) is not None:
            return  # created before a restart
        rj = self.remote_job(job)
        sudo = list(self.remote_sudo)
        dirs = [str(rj.code_dir), str(rj.data_dir), str(rj.output_dir)]
        # The SSH user owns the dirs while uploading; uid 1010 owns them for the run.
        await self._sh(
            job, shlex.join(sudo + ["install", "-d", "-m", "0700"]) + ' -o "$(id -u)" ' + shlex.join(dirs)
        )
        conn = await self._connect(job)
        async with conn.start_sftp_client() as sftp:
            for local, remote in ((job.code_dir, rj.code_dir), (job.data_dir, rj.data_dir)):
                await sftp.put([str(p) for p in local.iterdir()], str(remote), recurse=True)
        await self._sh(job, sudo + ["chown", "-R", "1010:1010", posixpath.dirname(str(rj.code_dir))])
        await self._sh(job, sudo + ["chmod", "0700", str(rj.output_dir)])
        await self._transfer_image(job)
        await self._docker(job, *self.create_argv(job)[len(self.docker_command) :])

    async def _transfer_image(self, job: RunJob) -> None:
        if self.image_transfer != "load":
            return
        if (await self._docker(job, "image", "inspect", job.image, check=False)).exit_status == 0:
            return
        conn = await self._connect(job)
        remote = await conn.create_process(shlex.join(list(self.docker_command) + ["load"]), encoding=None)
        local = await asyncio.create_subprocess_exec(
            self.podman, "save", job.image, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        while chunk := await local.stdout.read(1 << 16):
            remote.stdin.write(chunk)
            await remote.stdin.drain()
        remote.stdin.write_eof()
        res = await remote.wait()
        if await local.wait() != 0 or res.exit_status != 0:
            raise RunnerError(f"could not copy image {job.image} to the run host")

    @_terminates_on_error
    async def execute(self, job: RunJob) -> None:
        await super().execute(job)

    async def _start(self, job: RunJob) -> None:
        await self._docker(job, "start", job.container_name)

    async def get_status(self, job: RunJob) -> JobState:
        if await self.find_instance(job) is None:
            return JobState.UNKNOWN
        cs = await self._inspect(job)
        return cs.state if cs else JobState.UNKNOWN

    @_terminates_on_error
    async def wait(self, job: RunJob) -> RunResult:
        return await super().wait(job)

    async def _stop_at_time_limit(self, job: RunJob) -> None:
        await self._docker(
            job, "stop", "--time", str(self.stop_grace_seconds), job.container_name, check=False
        )

    @_terminates_on_error
    async def finalize(self, job: RunJob) -> RunResult:
        cs = await self._inspect(job)
        if cs is None or cs.state is not JobState.EXITED:
            raise RunnerError(f"run {job.run_id}: cannot finalize before the run has exited")
        logs = await self._sh(job, list(self.docker_command) + ["logs", job.container_name], encoding=None)
        text, cut = truncate_logs((logs.stdout or b"") + (logs.stderr or b""), job.limits.log_bytes)
        await self._fetch_outputs(job)
        timed_out = job.run_id in self._stopped_for_time or (
            (cs.exit_code or 0) > 128 and cs.ran_seconds >= job.limits.wall_seconds
        )
        await self._terminate_instance(job)  # results are in hand: the host has no use left
        return RunResult(
            exit_code=cs.exit_code,
            oom_killed=cs.oom_killed and not timed_out,
            timed_out=timed_out,
            logs=text,
            logs_cut_bytes=cut,
            duration_s=round(cs.ran_seconds, 3),
            limits=job.limits,
        )

    async def _fetch_outputs(self, job: RunJob) -> None:
        """Copy output/ back as a tar stream; extracted with the 'data' filter, so links
        that point outside, absolute paths and device files made by the run are refused."""
        rj = self.remote_job(job)
        res = await self._sh(
            job, list(self.remote_sudo) + ["tar", "-C", str(rj.output_dir), "-cf", "-", "."], encoding=None
        )
        job.output_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(_extract, res.stdout or b"", job.output_dir)

    async def terminate(self, job: RunJob) -> None:
        await self._terminate_instance(job)

    async def cleanup(self, job: RunJob) -> None:
        await self._terminate_instance(job)
        self._stopped_for_time.discard(job.run_id)


def _extract(data: bytes, dest: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        tf.extractall(dest, filter="data")
