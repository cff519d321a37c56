"""A NAT that rebinds: every client flow gets a new upstream port every N datagrams.

::

    client ──► nat.address ──(upstream port p1, then p2, p3...)──► server
    client ◄── nat.address ◄──(whichever upstream port it came in on)── server

What a client behind a NAT whose mappings expire looks like to the server: the same
connection, a new source port. Runs on the caller's event loop (raw non-blocking
sockets with ``add_reader``). Loopback only.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

Address = tuple[Any, ...]


@dataclass
class _Flow:
    upstream: list[socket.socket] = field(default_factory=list)
    sent: int = 0  # datagrams forwarded on the current upstream socket


class RebindingNat:
    def __init__(
        self, server: Address, every: int, host: str = "127.0.0.1",
        upstream_host: str | None = None,
    ) -> None:
        self.server = server
        self.every = every
        self.host = host
        self.upstream_host = upstream_host or host
        self.flows: dict[Address, _Flow] = {}
        self.rebinds = 0
        self.loop = asyncio.get_running_loop()
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind((host, 0))
        self.front.setblocking(False)
        self.loop.add_reader(self.front.fileno(), self._from_client)

    @property
    def address(self) -> Address:
        return self.front.getsockname()

    def _from_client(self) -> None:
        while True:
            try:
                data, addr = self.front.recvfrom(65535)
            except BlockingIOError:
                return
            flow = self.flows.setdefault(addr, _Flow())
            if not flow.upstream or flow.sent >= self.every:
                if flow.upstream:
                    self.rebinds += 1
                up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                up.bind((self.upstream_host, 0))
                up.setblocking(False)
                self.loop.add_reader(up.fileno(), self._from_server, up, addr)
                flow.upstream.append(up)
                flow.sent = 0
            flow.sent += 1
            try:
                flow.upstream[-1].sendto(data, self.server)
            except OSError:
                pass

    def _from_server(self, up: socket.socket, client: Address) -> None:
        while True:
            try:
                data = up.recv(65535)
            except BlockingIOError:
                return
            except OSError:
                return
            try:
                self.front.sendto(data, client)
            except OSError:
                pass

    def close(self) -> None:
        socks = [self.front] + [s for f in self.flows.values() for s in f.upstream]
        for s in socks:
            try:
                self.loop.remove_reader(s.fileno())
            except (ValueError, OSError):
                pass
            s.close()
        self.flows.clear()
