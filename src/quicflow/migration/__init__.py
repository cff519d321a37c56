"""Moving captured connections between processes (DESIGN.md, "Connectivity migration").

``handoff``: same host, over a unix socket (mode 0600, peer uid checked), with the UDP
sockets passed as file descriptors (SCM_RIGHTS) together with the sealed snapshots.
What a snapshot holds and how it is restored is the transport's (``transport.snapshot``);
the asyncio glue that captures and restores a running server is ``aio.handover``.
"""

from .handoff import HandoffError, HandoffListener, Offer, Received, take_over

__all__ = ["HandoffError", "HandoffListener", "Offer", "Received", "take_over"]
