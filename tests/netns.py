"""Hosts on one machine: network namespaces the tests make themselves (root, iproute2).

Two networks, each a bridge: the *front* one, in this process's own namespace (which is
the clients' host, at ``.1``), and the *back* one, in a namespace of its own (a switch).
A host has a link to either or both; :meth:`Network.cut` takes one down (its far end, in
the bridge's namespace: the host's own interface stays up, and what it sends is lost, as
behind a failed switch port), :meth:`Network.heal` brings it back. Everything is removed
by :meth:`Network.close`. No netem on this kernel: a link down is the only fault.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
from typing import Any

from tornws.bench.failover import Host

IP = "/usr/sbin/ip" if os.path.exists("/usr/sbin/ip") else "ip"


def _ip(*args: str) -> None:
    result = subprocess.run([IP, *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise OSError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def unavailable() -> str | None:
    """Why this machine cannot make the hosts (not root, no iproute2, the kernel refuses),
    or ``None``."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    name = f"twprobe{os.getpid() % 100000}"
    try:
        _ip("netns", "add", name)
    except (OSError, FileNotFoundError) as exc:
        return f"cannot make a network namespace: {exc}"
    try:
        _ip("link", "add", f"{name}v", "type", "veth", "peer", "name", f"{name}w")
        _ip("link", "del", f"{name}v")
        _ip("link", "add", f"{name}b", "type", "bridge")
        _ip("link", "del", f"{name}b")
    except OSError as exc:
        return f"cannot make a veth pair and a bridge: {exc}"
    finally:
        _ip("netns", "del", name)
    return None


class Network:
    """The two networks, ``10.231.N.0/24`` (front) and ``10.232.N.0/24`` (back), N random."""

    def __init__(self) -> None:
        self.tag = f"tw{random.randrange(16**4):04x}"  # (interface names: 15 characters)
        self.subnet = random.randrange(1, 250)
        self.namespaces: list[str] = []
        self.links: dict[tuple[str, str], str] = {}  # (host, network) -> its far end's name
        self._next = {"front": 2, "back": 1}
        self.switch = self._namespace("x")
        _ip("link", "add", f"{self.tag}F", "type", "bridge")
        _ip("addr", "add", f"10.231.{self.subnet}.1/24", "dev", f"{self.tag}F")
        _ip("link", "set", f"{self.tag}F", "up")
        _ip("-n", self.switch, "link", "add", "back", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "back", "up")
        self.front_address = f"10.231.{self.subnet}.1"

    def _namespace(self, name: str) -> str:
        namespace = f"{self.tag}{name}"
        _ip("netns", "add", namespace)
        self.namespaces.append(namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")
        return namespace

    def host(self, name: str, front: bool, back: bool) -> Host:
        """A new host on the front and/or back network: its addresses (back first, the
        one other hosts are given), reached from here at its front address if it has
        one, else its back one (unreachable from here)."""
        namespace = self._namespace(name)
        addresses = []
        for network, wanted in (("back", back), ("front", front)):
            if wanted:
                addresses.append(self._link(namespace, name, network))
        reach = addresses[-1] if front else addresses[0]
        return Host(tuple(addresses), reach, (IP, "netns", "exec", namespace))

    def _link(self, namespace: str, name: str, network: str) -> str:
        near, far = f"{self.tag}{name}{network[0]}", f"{self.tag}{name}{network[0]}p"
        _ip("link", "add", near, "type", "veth", "peer", "name", far)
        _ip("link", "set", near, "netns", namespace)
        _ip("-n", namespace, "link", "set", near, "name", network)
        number = self._next[network]
        self._next[network] += 1
        address = f"10.23{1 if network == 'front' else 2}.{self.subnet}.{number}"
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", network)
        _ip("-n", namespace, "link", "set", network, "up")
        if network == "front":
            _ip("link", "set", far, "master", f"{self.tag}F")
            _ip("link", "set", far, "up")
        else:
            _ip("link", "set", far, "netns", self.switch)
            _ip("-n", self.switch, "link", "set", far, "master", "back")
            _ip("-n", self.switch, "link", "set", far, "up")
        self.links[(name, network)] = far
        return address

    def _far(self, name: str, network: str) -> list[str]:
        far = self.links[(name, network)]
        return (["-n", self.switch] if network == "back" else []) + ["link", "set", far]

    def cut(self, name: str, network: str = "back") -> None:
        """Take host ``name``'s link to ``network`` down (at the bridge)."""
        _ip(*self._far(name, network), "down")

    def heal(self, name: str, network: str = "back") -> None:
        _ip(*self._far(name, network), "up")

    def close(self) -> None:
        for command in (
            ["link", "del", f"{self.tag}F"],
            *(["netns", "del", namespace] for namespace in reversed(self.namespaces)),
        ):
            with contextlib.suppress(OSError):
                _ip(*command)

    def __enter__(self) -> Network:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
