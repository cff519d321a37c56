"""Same-host takeover of a worker group: every worker hands over to its successor.

Paths: a group started with ``handoff=PATH`` offers at PATH itself (its supervisor) and
worker i offers its own handoff at ``PATH.i`` (:func:`worker_path`; the single-process
exchange of :mod:`.handoff`, one successor worker each). A successor group started with
``takeover=PATH`` and the same number of workers:

1. its supervisor connects to PATH, says ``GROUP_HELLO`` and how many workers it runs;
   the old supervisor refuses another count (and a single-process successor) with a
   message saying what to start instead, or answers with the reuseport group's member
   sockets (SCM_RIGHTS, in worker order; the CBPF steering program belongs to the
   kernel's group and stays attached, so the worker byte of every CID keeps routing to
   worker i) and stops restarting its workers;
2. the successor forks its workers; worker i takes over from ``PATH.i``: old worker i's
   socket (the same member socket), its per-connection sockets and its connections
   (restored into an endpoint issuing CIDs with the same worker byte); old worker i
   exits after its handoff and tells its supervisor how many connections it handed off;
3. the old supervisor exits when every worker has; the successor offers at PATH (and its
   workers at PATH.i) for the next one.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from .handoff import (
    _LEN,
    GROUP_HELLO,
    MAX_FDS,
    MAX_HEADER,
    HandoffError,
    _adopt_fd,
    _check_peer,
    _recv_exact,
    _send_frame,
)

GROUP_FORMAT = "quicflow-group-handoff-1"

__all__ = ["GROUP_FORMAT", "offer_group", "same_socket", "take_over_group", "worker_path"]


def worker_path(path: str, index: int) -> str:
    """Where worker ``index`` of a group offering at ``path`` offers its own handoff."""
    return f"{path}.{index}"


def offer_group(channel: socket.socket, workers: int, sockets: list[socket.socket]) -> None:
    """Give a successor group the member sockets (worker order) and close the channel."""
    raw = json.dumps({"format": GROUP_FORMAT, "workers": workers,
                      "sockets": len(sockets)}).encode()
    try:
        socket.send_fds(channel, [_LEN.pack(len(raw)) + raw], [s.fileno() for s in sockets])
    except OSError as exc:
        raise HandoffError(f"handing the group's sockets over failed: {exc}") from exc
    finally:
        channel.close()


def take_over_group(path: str, workers: int, timeout: float = 60.0) -> list[socket.socket]:
    """Connect to the worker group offering at ``path`` as a successor of ``workers``
    workers; returns its member sockets (HandoffError when refused, e.g. another count)."""
    if workers > MAX_FDS:
        raise HandoffError(f"at most {MAX_FDS} workers can take over")
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    channel.settimeout(timeout)
    received: list[socket.socket] = []
    try:
        channel.connect(path)
        _check_peer(channel)
        channel.sendall(GROUP_HELLO)
        _send_frame(channel, json.dumps({"workers": workers}).encode())
        data, fds, _, _ = socket.recv_fds(channel, 1 << 20, MAX_FDS)
        received = [_adopt_fd(fd) for fd in fds]
        if len(data) < _LEN.size:
            raise HandoffError("the old process closed the connection (is it a quicflow "
                               "server offering a handoff?)")
        (length,) = _LEN.unpack(data[: _LEN.size])
        if length > MAX_HEADER:
            raise HandoffError("handoff header over the limit")
        raw = data[_LEN.size :]
        if len(raw) < length:
            raw += _recv_exact(channel, length - len(raw))
        header: dict[str, Any] = json.loads(raw)
        if "error" in header:
            raise HandoffError(str(header["error"]))
        if header.get("format") != GROUP_FORMAT:
            raise HandoffError("not a quicflow worker group handoff (unknown format)")
        if header.get("workers") != workers or len(received) != workers:
            raise HandoffError(f"the group at {path} sent {len(received)} sockets for "
                               f"{header.get('workers')} workers, not {workers}")
    except (OSError, ValueError) as exc:
        for s in received:
            s.close()
        raise HandoffError(f"taking over from {path} failed: {exc}") from exc
    except BaseException:
        for s in received:
            s.close()
        raise
    finally:
        channel.close()
    return received


def same_socket(a: socket.socket, b: socket.socket) -> bool:
    """Whether two descriptors refer to the same kernel socket (same sockfs inode)."""
    return os.fstat(a.fileno()).st_ino == os.fstat(b.fileno()).st_ino
