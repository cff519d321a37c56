"""What conntrack's pinning of a 4-tuple means for a connection moved by CID (issue 7, 4b).

Run (root): ``.venv/bin/python bench/nft_pinning.py``. The namespaces of
``tests/support/lbnet.py`` (client, balancer, hosts 1 and 2) with plain UDP: a client
keeps one address and port and sends QUIC-shaped short headers (host ID at payload byte
2) to the service address; each host answers from port 4433. Two balancer rulesets:

- ``dnat``: the previous ruleset, ``dnat`` in a nat chain (stateful: conntrack);
- ``stateless``: docs/nftables-quic-lb.nft (``notrack``, ``ip daddr set`` / ``ip saddr
  set``, packet by packet).

Steps per ruleset: (1) a packet for host 1, then two for host 2, from the same 4-tuple;
(2) host 2 sends first to the client's address (as a server that restored a moved
connection does), then the client sends for host 2 again; with ``dnat`` the conntrack
entry of step 1 is deleted before step 2 (``conntrack -D``; Debian package ``conntrack``,
not among the project's dependencies: skipped when missing), the best that deleting can
do. Prints who received what and what source address the client saw.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.lbnet import RULESET, VIP, LbNet, lb_net  # noqa: E402
from tests.support.netns import popen_in, run_in  # noqa: E402

DNAT = """
define VIP = 10.77.9.9
define PORT = 4433
define HOST1 = 10.77.2.2
define HOST2 = 10.77.3.2
table ip quic_lb
delete table ip quic_lb
table ip quic_lb {
	map server_host {
		typeof @th,80,8 : ip daddr
		elements = { 1 : $HOST1, 2 : $HOST2 }
	}
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip daddr $VIP udp dport $PORT jump quic
	}
	chain quic {
		@th,64,1 0 counter dnat to @th,80,8 map @server_host
		counter dnat to jhash ip saddr . udp sport . ip daddr . udp dport mod 2 map { 0 : $HOST1, 1 : $HOST2 }
	}
}
"""  # noqa: E501

HOST = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.bind(("0.0.0.0", 4433)); s.settimeout(4)
try:
    while True:
        d, a = s.recvfrom(2000)
        print(f"host {sys.argv[1]} received a packet for host {d[2]} from {a[0]}:{a[1]}",
              flush=True)
        s.sendto(b"answer", a)
except socket.timeout:
    pass
"""

CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 50000)); s.settimeout(1)
for step in sys.argv[1].split(","):
    if step != "listen":
        s.sendto(bytes([0x41, 0x01, int(step), 0x00]) + bytes(20), ("10.77.9.9", 4433))
    try:
        d, a = s.recvfrom(2000)
        print(f"client: {'sent for host ' + step if step != 'listen' else 'waiting'}: "
              f"got {d!r} from {a[0]}:{a[1]}", flush=True)
    except socket.timeout:
        print(f"client: {'sent for host ' + step if step != 'listen' else 'waiting'}: "
              "got nothing", flush=True)
"""

PUSH = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1); s.bind(('0.0.0.0', 4433)); "
        "s.sendto(b'first from host 2', ('10.77.1.2', 50000))")


def load(net: LbNet, text: str) -> None:
    values = {"VIP": VIP, "PORT": "4433", "HOST1": net.host_ips[0], "HOST2": net.host_ips[1]}
    for name, value in values.items():
        text = re.sub(rf"(?m)^define {name} = .*$", f"define {name} = {value}", text)
    run_in(net.router, ["nft", "-f", "-"], input=text, stdin=None)


def scenario(name: str, text: str) -> None:
    print(f"\n### {name}\n")
    with lb_net() as net:
        load(net, text)
        hosts = [popen_in(ns, [sys.executable, "-c", HOST, str(i + 1)], stdout=subprocess.PIPE)
                 for i, ns in enumerate(net.hosts)]
        time.sleep(0.5)
        print(run_in(net.client, [sys.executable, "-c", CLIENT, "1,2,2"]).stdout, end="")
        if name == "dnat" and shutil.which("conntrack") is None:
            print("conntrack -D: skipped (install the Debian package conntrack)")
        elif name == "dnat":
            deleted = run_in(net.router, ["conntrack", "-D", "-p", "udp", "--orig-src",
                                          net.client_ip, "--sport", "50000"], check=False)
            print(f"conntrack -D: {deleted.stderr.strip() or deleted.stdout.strip()}")
        client = popen_in(net.client, [sys.executable, "-c", CLIENT, "listen,2,2"],
                          stdout=subprocess.PIPE)
        time.sleep(0.3)
        run_in(net.hosts[1], [sys.executable, "-c", PUSH])
        print(client.communicate(timeout=10)[0], end="")
        for host in hosts:
            print(host.communicate(timeout=10)[0], end="")


def main() -> int:
    scenario("dnat", DNAT)
    scenario("stateless", RULESET.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
