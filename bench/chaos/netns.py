"""Agents in network namespaces of their own, joined to this host by veth pairs.

For agent ``i`` the harness makes namespace ``<prefix>-<i>`` and a veth pair: the host
end gets ``10.<net>.<i>.1/30``, the namespace end ``10.<net>.<i>.2/30``. A
:class:`~bench.chaos.proxy.FaultProxy` listens on the host end and forwards to the
broker on loopback, so every byte between that agent and the broker crosses the veth
(partition: link down; a 3G modem: ``tc ... tbf``) and the proxy (latency, stalls, a
flapping link). Only addresses inside namespaces made here are touched, and
:meth:`AgentLinks.close` removes all of it. Root only.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field

from bench.chaos.proxy import FaultProxy


class NetnsUnavailableError(RuntimeError):
    """``ip netns`` cannot be used here (not root, no iproute2)."""


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NetnsUnavailableError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _tc(*args: str) -> None:
    subprocess.run(["tc", *args], capture_output=True, text=True, check=True)


@dataclass
class AgentLink:
    namespace: str
    host_dev: str
    host_ip: str
    proxy: FaultProxy | None = None

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.namespace]

    def set_up(self, up: bool) -> None:
        """Partition (down) or heal (up) the link, on both ends."""
        state = "up" if up else "down"
        _ip("link", "set", self.host_dev, state)
        _ip("netns", "exec", self.namespace, "ip", "link", "set", f"{self.host_dev[:-1]}n", state)

    def throttle(self, rate: str | None) -> None:
        """Limit both directions to ``rate`` (a tbf qdisc, e.g. ``384kbit``); None removes it."""
        ends = [["dev", self.host_dev], ["-n", self.namespace, "dev", f"{self.host_dev[:-1]}n"]]
        for end in ends:
            netns, dev = (end[:2], end[2:]) if end[0] == "-n" else ([], end)
            if rate is None:
                subprocess.run(["tc", *netns, "qdisc", "del", *dev, "root"], capture_output=True, check=False)
            else:
                _tc(
                    *netns,
                    "qdisc",
                    "replace",
                    *dev,
                    "root",
                    "tbf",
                    "rate",
                    rate,
                    "burst",
                    "16kbit",
                    "latency",
                    "400ms",
                )


@dataclass
class AgentLinks:
    """The namespaces and veth pairs of one run."""

    prefix: str = field(default_factory=lambda: f"rsc{os.getpid() % 100000}")
    net: int = field(default_factory=lambda: 200 + os.getpid() % 50)
    links: list[AgentLink] = field(default_factory=list)

    def host_ip(self, index: int) -> str:
        return f"10.{self.net}.{index}.1"

    def add(self, index: int) -> AgentLink:
        namespace, host_dev = f"{self.prefix}-{index}", f"{self.prefix}v{index}h"
        inner = f"{self.prefix}v{index}n"
        _ip("netns", "add", namespace)
        link = AgentLink(namespace, host_dev, self.host_ip(index))
        self.links.append(link)
        _ip("link", "add", host_dev, "type", "veth", "peer", "name", inner)
        _ip("link", "set", inner, "netns", namespace)
        _ip("addr", "add", f"{link.host_ip}/30", "dev", host_dev)
        _ip("link", "set", host_dev, "up")
        _ip("netns", "exec", namespace, "ip", "addr", "add", f"10.{self.net}.{index}.2/30", "dev", inner)
        _ip("netns", "exec", namespace, "ip", "link", "set", inner, "up")
        _ip("netns", "exec", namespace, "ip", "link", "set", "lo", "up")
        return link

    def close(self) -> None:
        for link in self.links:
            if link.proxy is not None:
                link.proxy.close()
            subprocess.run(["ip", "netns", "del", link.namespace], capture_output=True, check=False)
            subprocess.run(["ip", "link", "del", link.host_dev], capture_output=True, check=False)
        self.links = []
