"""Client certificates with qh3 (issue 8, item 3), over real loopback sockets: qh3's
client presents a certificate to our server that requires one (accepted: both transfer
directions hash-checked and our side reads qh3's certificate), presents none (refused
with CRYPTO_ERROR 0x100 + 116 certificate_required, which qh3 reports), or presents one
from another CA (refused with 0x100 + 48 unknown_ca).

qh3 as the *server* cannot ask for a client certificate, so there is no test of our
client presenting one to qh3's server.  Evidence, qh3 2.1.0 (``qh3/tls.py``): the server
state machine goes ``SERVER_EXPECT_CLIENT_HELLO`` -> ``SERVER_EXPECT_FINISHED`` ->
``SERVER_POST_HANDSHAKE`` with no state for a client Certificate or CertificateVerify
(either would raise ``AlertUnexpectedMessage``); ``CertificateRequest`` is only parsed
(``pull_certificate_request``, used by the client), never written (there is no
``push_certificate_request``); and ``QuicConfiguration`` has no option to request or
verify one (``verify_mode`` only reaches the client's check of the server).  What can
be shown is the other half of the contract: our client configured with a certificate
connects to qh3's server, which never asks, sends no certificate and transfers intact.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import quicflow
from tests.support.prereq import have_module
from tests.support.quic_helpers import ca, issued, run, server_config
from tests.test_client_certs import (
    CERTIFICATE_REQUIRED,
    DOWNLOAD,
    UNKNOWN_CA,
    UPLOAD,
    client_cred,
    foreign_client_to_requiring_server,
)
from tests.test_interop_qh3 import (
    CA_NAME,
    Pki,
    our_exchange,
    pki,  # noqa: F401  (fixture)
    with_qh3_server,
)

pytestmark = pytest.mark.interop

# The server certificate and the client CA must differ from the qh3 pki's CA only where
# the test says so: our server is "localhost" from CA_NAME (qh3 trusts it), and trusts
# CA "A" for client certificates; "B" is the wrong CA.


def requiring_server() -> quicflow.Configuration:
    return server_config(issued(CA_NAME, "localhost"), client_certificates="require",
                         cadata=ca("A").cert_pem)


@pytest.mark.parametrize(("cred", "alert"),
                         [("A", None), (None, CERTIFICATE_REQUIRED), ("B", UNKNOWN_CA)])
def test_qh3_client_with_quicflow_server(
    cred: str | None, alert: int | None, tmp_path: Path, pki: Pki  # noqa: F811
) -> None:
    face = foreign_client_to_requiring_server(
        "qh3", requiring_server(), pki.cafile, cred, alert, tmp_path)
    if alert is not None:
        assert face.peer_certificates == []


def test_quicflow_client_with_certificate_unasked_by_qh3_server(pki: Pki) -> None:  # noqa: F811
    """qh3's server never sends a CertificateRequest: our client holding a certificate
    sends none (RFC 8446 §4.4.2: only in response to a request) and transfers intact."""
    cred = client_cred("A")

    async def body(conn: quicflow.QuicConnection) -> tuple[dict[str, object], Any]:
        result = await our_exchange(conn, upload=UPLOAD, download=DOWNLOAD, seed=21)
        assert conn.conn.tls is not None
        return result, conn.conn.tls._hs

    (result, hs), peer, _ = run(with_qh3_server(
        pki, body, client_kw={"certificate_chain": [cred.cert], "private_key": cred.key}), 60)
    assert result["ok"], result
    assert hs.cert_request_context is None  # never asked, so nothing was sent
    assert [ev for ev in peer.events if ev["event"] == "handshake"], peer.events


def test_qh3_server_cannot_be_asked_for_client_certificates(
    require: Callable[[bool, str], None],
) -> None:
    """Keeps the docstring's evidence honest: if a later qh3 learns to send a
    CertificateRequest, this fails and the missing test above should be written."""
    import importlib

    require(have_module("qh3"), "Python package 'qh3' not installed (make venv)")
    tls = importlib.import_module("qh3.tls")
    assert not hasattr(tls, "push_certificate_request")
    assert {s.name for s in tls.State if s.name.startswith("SERVER_")} == {
        "SERVER_EXPECT_CLIENT_HELLO", "SERVER_EXPECT_FINISHED", "SERVER_POST_HANDSHAKE"}
