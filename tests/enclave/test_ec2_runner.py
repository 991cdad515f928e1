"""EC2Runner against moto (server mode) + a real asyncssh server on loopback standing in for
the instance's sshd. The 'instance' runs commands locally with a `docker` shim that records
its argv and execs podman, so the container really runs."""

import asyncio
import base64
import json
import os
import sys

import asyncssh
import pytest
import pytest_asyncio
from aiobotocore.session import get_session

from enclave_service.container import ENGINE_FLAGS
from enclave_service.runners import RunnerError
from enclave_service.runners.ec2 import EC2Runner, host_key_from_console
from enclave_service.runners.podman import PodmanRunner

from .conftest import needs_podman

pytestmark = needs_podman
SECRET = "kinetic-enclave-key-ec2-7f3a9c1d2e"
HUB = "test-hub"

SHIM = """#!{python}
import json, os, sys
with open(os.environ["DOCKER_SHIM_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
os.execvp("podman", ["podman", "--runtime", "runc"] + sys.argv[1:])
"""


@pytest.fixture(scope="module")
def moto_url():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_env(monkeypatch):
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "eu-west-2",
        "KINETIC_ENCLAVE_KEY": SECRET,
    }.items():
        monkeypatch.setenv(k, v)


def ec2_client(url):
    return get_session().create_client("ec2", region_name="eu-west-2", endpoint_url=url)


@pytest_asyncio.fixture(loop_scope="function")
async def network(moto_url, aws_env):
    async with ec2_client(moto_url) as ec2:
        ami = (await ec2.describe_images())["Images"][0]["ImageId"]
        vpc = (await ec2.create_vpc(CidrBlock="10.20.0.0/16"))["Vpc"]["VpcId"]
        subnet = (await ec2.create_subnet(VpcId=vpc, CidrBlock="10.20.1.0/24"))["Subnet"]["SubnetId"]
        sg = (await ec2.create_security_group(GroupName=f"run-{vpc}", Description="ssh from hub", VpcId=vpc))[
            "GroupId"
        ]
    return {"ami": ami, "subnet": subnet, "sg": sg}


async def keys_from_live_user_data(moto_url) -> set[str]:
    """What cloud-init would have put in authorized_keys: the public keys that the user data of
    each live run host writes."""
    keys = set()
    async with ec2_client(moto_url) as ec2:
        resp = await ec2.describe_instances(
            Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}]
        )
        for inst in (i for r in resp["Reservations"] for i in r["Instances"]):
            ud = (await ec2.describe_instance_attribute(InstanceId=inst["InstanceId"], Attribute="userData"))[
                "UserData"
            ].get("Value", "")
            for line in base64.b64decode(ud).decode().splitlines():
                if "ssh-ed25519 " in line:
                    keys.add(line.split("ssh-ed25519 ", 1)[1].split()[0])
    return keys


class InstanceSSHServer(asyncssh.SSHServer):
    """Accepts a client key only if a live instance's user data authorized it (as cloud-init
    does), or the fixture's fallback key."""

    def __init__(self, moto_url, fallback):
        self.moto_url, self.fallback = moto_url, fallback

    def begin_auth(self, username):
        return True

    def public_key_auth_supported(self):
        return True

    async def validate_public_key(self, username, key):
        blob = key.export_public_key().decode().split()[1]
        return blob == self.fallback or blob in await keys_from_live_user_data(self.moto_url)


@pytest_asyncio.fixture(loop_scope="function")
async def fake_instance_sshd(tmp_path, moto_url):
    """asyncssh server on 127.0.0.1 running each command locally, docker shim on PATH."""
    shim_dir = tmp_path / "shim"
    shim_dir.mkdir()
    (shim_dir / "docker").write_text(SHIM.format(python=sys.executable))
    (shim_dir / "docker").chmod(0o755)
    log = tmp_path / "docker-calls.jsonl"
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key_path = tmp_path / "hub_key"
    client_key.write_private_key(str(client_key_path))
    env = {**os.environ, "PATH": f"{shim_dir}:{os.environ['PATH']}", "DOCKER_SHIM_LOG": str(log)}

    async def handle(process):
        proc = await asyncio.create_subprocess_shell(
            process.command,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

        async def pump_in():
            try:
                while data := await process.stdin.read(65536):
                    proc.stdin.write(data)
                    await proc.stdin.drain()
            finally:
                proc.stdin.close()

        async def pump_out(src, dst):  # by hand: process.redirect races (ENVIRONMENT.md)
            while chunk := await src.read(65536):
                dst.write(chunk)

        feeder = asyncio.ensure_future(pump_in())  # like sshd: stdin need not reach EOF
        await asyncio.gather(pump_out(proc.stdout, process.stdout), pump_out(proc.stderr, process.stderr))
        rc = await proc.wait()
        feeder.cancel()
        process.exit(rc)

    fallback = client_key.export_public_key().decode().split()[1]
    server = await asyncssh.create_server(
        lambda: InstanceSSHServer(moto_url, fallback),
        "127.0.0.1",
        0,
        server_host_keys=[host_key],
        process_factory=handle,
        sftp_factory=True,
        encoding=None,
    )
    port = server.sockets[0].getsockname()[1]
    pub = host_key.export_public_key().decode().strip()
    yield {"port": port, "host_pub": pub, "client_key": str(client_key_path), "log": log}
    server.close()


@pytest.fixture
def ec2_runner(moto_url, network, fake_instance_sshd, tmp_path):
    sshd = fake_instance_sshd

    async def pinned_key(runner, instance):
        return sshd["host_pub"]  # production: console_host_key (cloud-init console lines)

    def make(**kw):
        kw.setdefault("ssh_client_key_path", sshd["client_key"])
        return EC2Runner(
            endpoint_url=moto_url,
            image_id=network["ami"],
            subnet_id=network["subnet"],
            security_group_ids=[network["sg"]],
            hub_name=HUB,
            ssh_username="admin",
            host_key_source=pinned_key,
            connect_address=lambda inst: ("127.0.0.1", sshd["port"]),
            docker_command=["docker"],
            remote_sudo=[],
            remote_root=str(tmp_path / "remote"),
            ssh_key_dir=str(tmp_path / "run-keys"),
            poll_interval=0.2,
            stop_grace_seconds=1,
            **kw,
        )

    return make


async def instance_of(moto_url, run_id):
    async with ec2_client(moto_url) as ec2:
        resp = await ec2.describe_instances(Filters=[{"Name": "tag:kinetic.run_id", "Values": [run_id]}])
    found = [i for r in resp["Reservations"] for i in r["Instances"]]
    assert len(found) == 1
    return found[0]


def docker_calls(log):
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def core_argv(argv, engine):
    """Strip what is allowed to differ: program name, engine-only flags, runtime."""
    argv = list(argv[argv.index("create") + 1 :])
    for flag in ENGINE_FLAGS[engine]:
        argv.remove(flag)
    if "--runtime" in argv:
        i = argv.index("--runtime")
        del argv[i : i + 2]
    return argv


async def test_successful_run_hardened_instance_then_terminated(
    ec2_runner, busybox_image, make_job, moto_url, fake_instance_sshd
):
    runner = ec2_runner()
    job = make_job(busybox_image, "cat data/input.csv > output/copy.csv; id -u; echo ok", kind="sh")
    await runner.prepare(job)
    inst = await instance_of(moto_url, job.run_id)
    assert inst["State"]["Name"] == "running"
    assert inst["MetadataOptions"]["HttpTokens"] == "required"
    assert inst["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    assert "PublicIpAddress" not in inst and not inst["NetworkInterfaces"][0].get("Association")
    assert "IamInstanceProfile" not in inst
    tags = {t["Key"]: t["Value"] for t in inst["Tags"]}
    assert tags["Application"] == "KineticWorkspaces"
    assert tags["kinetic.run_id"] == job.run_id and tags["kinetic.hub"] == HUB
    async with ec2_client(moto_url) as ec2:
        ud = (await ec2.describe_instance_attribute(InstanceId=inst["InstanceId"], Attribute="userData"))[
            "UserData"
        ]["Value"]
    user_data = base64.b64decode(ud).decode()
    assert "shutdown -h +" in user_data  # dead man's switch
    for leak in (SECRET, "PRIVATE KEY", open(fake_instance_sshd["client_key"]).read().strip()):
        assert leak not in user_data
    assert SECRET not in json.dumps(runner.launch_params(job))

    # The docker argv is the podman argv, modulo program name, engine-only flags, runtime.
    create = [c for c in docker_calls(fake_instance_sshd["log"]) if c[0] == "create"]
    assert len(create) == 1
    podman_argv = PodmanRunner(hub_name=HUB).create_argv(runner.remote_job(job))
    assert core_argv(["docker"] + create[0], "docker") == core_argv(podman_argv, "podman")
    assert "--network" in create[0] and "--read-only" in create[0]

    await runner.prepare(job)  # idempotent: no second create
    assert len([c for c in docker_calls(fake_instance_sshd["log"]) if c[0] == "create"]) == 1
    await runner.execute(job)
    res = await runner.wait(job)
    assert res.succeeded, res.logs
    assert "1010" in res.logs and "ok" in res.logs
    assert (job.output_dir / "copy.csv").read_text() == "x\n1\n2\n3\n"
    assert (await instance_of(moto_url, job.run_id))["State"]["Name"] in ("shutting-down", "terminated")
    await runner.cleanup(job)  # idempotent after termination
    await _rm(job)


async def test_failing_run_terminates_instance(ec2_runner, busybox_image, make_job, moto_url):
    runner = ec2_runner()
    job = make_job(busybox_image, "echo failing; exit 3", kind="sh")
    await runner.prepare(job)
    await runner.execute(job)
    res = await runner.wait(job)
    assert res.exit_code == 3 and not res.succeeded
    assert res.failure_reason() == "the R script exited with code 3"
    assert (await instance_of(moto_url, job.run_id))["State"]["Name"] in ("shutting-down", "terminated")
    await _rm(job)


async def test_timeout_terminates_instance(ec2_runner, busybox_image, make_job, moto_url):
    runner = ec2_runner()
    job = make_job(busybox_image, "sleep 60", kind="sh", wall_seconds=2)
    await runner.prepare(job)
    await runner.execute(job)
    res = await runner.wait(job)
    assert res.timed_out and res.failure_reason() == "stopped at the time limit of 2 s"
    assert (await instance_of(moto_url, job.run_id))["State"]["Name"] in ("shutting-down", "terminated")
    await _rm(job)


async def test_exception_mid_run_terminates_instance(ec2_runner, busybox_image, make_job, moto_url):
    runner = ec2_runner()
    job = make_job(busybox_image, "sleep 30", kind="sh")
    await runner.prepare(job)
    await runner.execute(job)

    async def lost(*a, **kw):
        raise RunnerError("connection to the run host lost")

    runner._inspect = lost
    with pytest.raises(RunnerError):
        await runner.wait(job)
    assert (await instance_of(moto_url, job.run_id))["State"]["Name"] in ("shutting-down", "terminated")
    await _rm(job)


async def test_wrong_host_key_is_refused_and_instance_terminated(
    ec2_runner, busybox_image, make_job, moto_url
):
    impostor = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()

    async def wrong_key(runner, instance):
        return impostor

    runner = ec2_runner()
    runner.host_key_source = wrong_key
    job = make_job(busybox_image, "echo never", kind="sh")
    t0 = asyncio.get_running_loop().time()
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await runner.prepare(job)
    assert asyncio.get_running_loop().time() - t0 < 10  # not retried
    assert (await instance_of(moto_url, job.run_id))["State"]["Name"] in ("shutting-down", "terminated")


async def test_reap_orphans(ec2_runner, moto_url, network):
    runner = ec2_runner()
    async with ec2_client(moto_url) as ec2:
        tags = [
            {"Key": "Application", "Value": "KineticWorkspaces"},
            {"Key": "kinetic.hub", "Value": HUB},
            {"Key": "kinetic.run_id", "Value": "orphan-1"},
        ]
        await ec2.run_instances(
            ImageId=network["ami"],
            MinCount=1,
            MaxCount=1,
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
        )
    reaped = await runner.reap_orphans(active_run_ids={"still-running"})
    assert len(reaped) >= 1
    assert (await instance_of(moto_url, "orphan-1"))["State"]["Name"] in ("shutting-down", "terminated")


def test_host_key_from_console():
    console = (
        "cloud-init: boot\n-----BEGIN SSH HOST KEY KEYS-----\n"
        "ecdsa-sha2-nistp256 AAAAE2VjZHNh root@ip-10-0-0-1\n"
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 root@ip-10-0-0-1\n"
        "-----END SSH HOST KEY KEYS-----\nlogin:"
    )
    assert host_key_from_console(console) == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5"
    assert host_key_from_console("Linux version 2.6.16-xenU (canned moto output)") is None


async def _rm(job):
    proc = await asyncio.create_subprocess_exec(
        "podman", "rm", "-f", "-t", "0", "--ignore", job.container_name, stdout=asyncio.subprocess.DEVNULL
    )
    await proc.wait()


async def test_each_run_host_gets_its_own_ssh_key(
    ec2_runner, busybox_image, make_job, moto_url, fake_instance_sshd, tmp_path
):
    """W3: one SSH key shared by every instance in the original. Here each run's host authorizes a
    key made for that run; its private half never leaves the service and dies with the host."""
    runner = ec2_runner(ssh_client_key_path="")  # no shared key to fall back on
    jobs = [make_job(busybox_image, "echo one", kind="sh"), make_job(busybox_image, "echo two", kind="sh")]
    pubs = []
    for job in jobs:
        await runner.prepare(job)
        ud = runner.user_data(job)
        assert "PRIVATE KEY" not in ud
        pubs.append(runner.run_key(job).export_public_key().decode().split()[1])
        assert pubs[-1] in ud
        key_file = tmp_path / "run-keys" / f"{job.run_id}.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
    assert pubs[0] != pubs[1]
    for job in jobs:
        await runner.execute(job)
        assert (await runner.wait(job)).succeeded  # it logged in with its own key
        assert not (tmp_path / "run-keys" / f"{job.run_id}.key").exists()  # gone with the host
    # a terminated host's key is no longer authorized anywhere
    assert pubs[0] not in await keys_from_live_user_data(moto_url)
    for job in jobs:
        await runner.cleanup(job)
        await _rm(job)
