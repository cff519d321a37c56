"""A client, a router and two backend hosts in network namespaces (scale-out tests).

::

    client 10.77.1.2 ── 10.77.1.1 router 10.77.2.1 ── 10.77.2.2 host 1
                                         10.77.3.1 ── 10.77.3.2 host 2

The service address ``VIP`` (10.77.9.9) exists nowhere: the router's nftables ruleset
(docs/nftables-quic-lb.nft) rewrites it, packet by packet, to a host's address; hosts
and the client route via the router, so replies pass it and leave with the VIP as
source. Private 10.77.x
addresses, only inside these namespaces. Needs root; always cleaned up.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.netns import ip, run_in

VIP = "10.77.9.9"
RULESET = Path(__file__).resolve().parents[2] / "docs" / "nftables-quic-lb.nft"


@dataclass
class LbNet:
    tag: str = field(default_factory=lambda: f"{os.getpid() % 100000}")
    created: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client = f"qflc{self.tag}"
        self.router = f"qflr{self.tag}"
        self.hosts = [f"qflh1{self.tag}", f"qflh2{self.tag}"]
        self.host_ips = ["10.77.2.2", "10.77.3.2"]
        self.client_ip = "10.77.1.2"

    def _link(self, ns_a: str, ns_b: str, n: int, a_ip: str, b_ip: str) -> None:
        va, vb = f"qfl{n}a{self.tag}"[:15], f"qfl{n}b{self.tag}"[:15]
        ip("link", "add", va, "netns", ns_a, "type", "veth", "peer", "name", vb, "netns", ns_b)
        for ns, dev, cidr in ((ns_a, va, a_ip), (ns_b, vb, b_ip)):
            ip("-n", ns, "addr", "add", cidr, "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")

    def create(self) -> LbNet:
        try:
            for ns in (self.client, self.router, *self.hosts):
                ip("netns", "add", ns)
                self.created.append(ns)
                ip("-n", ns, "link", "set", "lo", "up")
            self._link(self.router, self.client, 1, "10.77.1.1/24", "10.77.1.2/24")
            self._link(self.router, self.hosts[0], 2, "10.77.2.1/24", "10.77.2.2/24")
            self._link(self.router, self.hosts[1], 3, "10.77.3.1/24", "10.77.3.2/24")
            ip("-n", self.client, "route", "add", "default", "via", "10.77.1.1")
            ip("-n", self.hosts[0], "route", "add", "default", "via", "10.77.2.1")
            ip("-n", self.hosts[1], "route", "add", "default", "via", "10.77.3.1")
            run_in(self.router, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        except BaseException:
            self.remove()
            raise
        return self

    def load_ruleset(self, port: int, *, new_connections_to_host1: bool = False) -> None:
        """The documented ruleset with this network's addresses and ``port``; with
        ``new_connections_to_host1`` the hash for Initials picks host 1 only (host 2
        gets connections only by their CIDs, e.g. moved to it)."""
        text = RULESET.read_text()
        values = {"VIP": VIP, "PORT": str(port), "HOST1": self.host_ips[0],
                  "HOST2": self.host_ips[1]}  # fmt: skip
        for name, value in values.items():
            text, n = re.subn(rf"(?m)^define {name} = .*$", f"define {name} = {value}", text)
            assert n == 1, f"the ruleset has no 'define {name}' line"
        if new_connections_to_host1:
            old = "map { 0 : $HOST1, 1 : $HOST2 }"
            assert text.count(old) == 1, "the ruleset's hash for Initials changed"
            text = text.replace(old, "map { 0 : $HOST1, 1 : $HOST1 }")
        run_in(self.router, ["nft", "-f", "-"], input=text, stdin=None)

    def rule_packets(self) -> list[int]:
        """Packets counted by each rule of the ``quic`` chain, in order (the ruleset is
        stateless: every packet to the service address is counted by the rule that
        routed it)."""
        out = run_in(self.router, ["nft", "-j", "list", "chain", "ip", "quic_lb", "quic"])
        counts = []
        for item in json.loads(out.stdout)["nftables"]:
            rule = item.get("rule")
            if rule is None:
                continue
            for stmt in rule["expr"]:
                if "counter" in stmt:
                    counts.append(int(stmt["counter"]["packets"]))
        return counts

    def remove(self) -> None:
        for ns in reversed(self.created):
            ip("netns", "del", ns, check=False)
        self.created.clear()


@contextmanager
def lb_net() -> Iterator[LbNet]:
    net = LbNet()
    try:
        yield net.create()
    finally:
        net.remove()
