"""The workspaces' network: a podman bridge of their own, and a firewall around it.

A workspace may reach the internet (researchers install packages) and, on this machine, only the
ports it needs: the hub's API (its own token decides what it may do there) and, locally, Kinetic
(the stand-in). Everything else on this machine — the proxy's API, the enclave service, the mail
sink, anything listening beyond loopback — and cloud metadata addresses are refused, and so is
traffic between two workspaces. Services bound to 127.0.0.1 are out of reach anyway (a container's
127.0.0.1 is its own); the firewall closes what listens on the bridge or on every address.

Rules (iptables, installed idempotently, root only)::

    INPUT   -s <subnet> -j KINETIC-WS-IN
    KINETIC-WS-IN   ESTABLISHED,RELATED → ACCEPT     (answers to the proxy's and hub's requests)
                    tcp dport <allowed port> → ACCEPT (one rule per port: hub API, Kinetic)
                    everything else → REJECT
    FORWARD -s <subnet> -j KINETIC-WS-FWD, and the same jump in CNI-ADMIN (podman's CNI firewall
            plugin puts its own ACCEPTs at the top of FORWARD; CNI-ADMIN is the chain it runs
            before them, "for admin overrides")
    KINETIC-WS-FWD  -d <blocked cidr> → REJECT        (169.254.0.0/16: cloud metadata)
                    -d <subnet> → REJECT              (workspace to workspace, bridged)
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil

from ..commands import run_command

CHAIN_IN = "KINETIC-WS-IN"
CHAIN_FWD = "KINETIC-WS-FWD"

_lock = asyncio.Lock()


class NetworkError(RuntimeError):
    """The workspaces' network or firewall could not be set up; the message says which command."""


async def _run(*argv: str, timeout: float = 60) -> tuple[int, str]:
    rc, out, _ = await run_command(list(argv), timeout)
    return rc, out


async def ensure_network(podman: str, name: str, subnet: str) -> tuple[str, str]:
    """Create the bridge network if missing; return its (subnet, gateway) as podman has them."""
    async with _lock:
        rc, _ = await _run(podman, "network", "exists", name)
        if rc != 0:
            rc, out = await _run(podman, "network", "create", "--subnet", subnet, name)
            if rc != 0 and "already exists" not in out:
                raise NetworkError(f"podman network create {name} failed: {out[-500:]}")
        rc, out = await _run(
            podman,
            "network",
            "inspect",
            name,
            "--format",
            "{{range .Subnets}}{{.Subnet}} {{.Gateway}}\n{{end}}",
        )
        if rc != 0 or not out.split():
            raise NetworkError(f"podman network inspect {name} failed: {out[-500:]}")
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and ipaddress.ip_network(parts[0], strict=False).version == 4:
                return parts[0], parts[1]
        raise NetworkError(f"network {name} has no IPv4 subnet: {out[-300:]}")


async def _ensure_rule(iptables: str, chain: str, rule: list[str], position: int | None) -> None:
    rc, _ = await _run(iptables, "-w", "-C", chain, *rule)
    if rc == 0:
        return
    where = ["-I", chain, str(position)] if position else ["-A", chain]
    rc, out = await _run(iptables, "-w", *where, *rule)
    if rc != 0:
        raise NetworkError(f"iptables {' '.join(where + rule)} failed: {out[-300:]}")


async def _ensure_chain(iptables: str, chain: str) -> None:
    rc, out = await _run(iptables, "-w", "-N", chain)
    if rc != 0 and "exists" not in out:
        raise NetworkError(f"iptables -N {chain} failed: {out[-300:]}")


def firewall_available() -> bool:
    return os.geteuid() == 0 and shutil.which("iptables") is not None


async def ensure_firewall(
    subnet: str, gateway: str, allowed_tcp_ports, blocked_cidrs, iptables: str = "iptables"
) -> None:
    """Install the rules above (idempotent: several hubs on one machine share the chains and each
    adds its own allowed ports)."""
    async with _lock:
        await _ensure_chain(iptables, CHAIN_IN)
        await _ensure_chain(iptables, CHAIN_FWD)
        await _ensure_rule(iptables, "INPUT", ["-s", subnet, "-j", CHAIN_IN], 1)
        await _ensure_rule(iptables, "FORWARD", ["-s", subnet, "-j", CHAIN_FWD], 1)
        await _ensure_chain(iptables, "CNI-ADMIN")
        await _ensure_rule(iptables, "CNI-ADMIN", ["-s", subnet, "-j", CHAIN_FWD], 1)
        # the final REJECT first (appended once), then the ACCEPTs inserted above it
        await _ensure_rule(
            iptables, CHAIN_IN, ["-j", "REJECT", "--reject-with", "icmp-port-unreachable"], None
        )
        for port in sorted(set(int(p) for p in allowed_tcp_ports)):
            await _ensure_rule(
                iptables, CHAIN_IN, ["-d", gateway, "-p", "tcp", "--dport", str(port), "-j", "ACCEPT"], 1
            )
        await _ensure_rule(
            iptables, CHAIN_IN, ["-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"], 1
        )
        for cidr in [*blocked_cidrs, subnet]:
            await _ensure_rule(iptables, CHAIN_FWD, ["-d", cidr, "-j", "REJECT"], 1)


__all__ = ["ensure_network", "ensure_firewall", "firewall_available", "NetworkError", "CHAIN_IN", "CHAIN_FWD"]
