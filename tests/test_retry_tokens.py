"""Address validation: Retry, NEW_TOKEN tokens and what happens to bad ones (RFC 9000
§8.1), in memory between two sans-I/O endpoints."""

from __future__ import annotations

import hashlib
import socket

from quicflow.endpoint.endpoint import Endpoint
from quicflow.endpoint.stateless import retry_packet
from quicflow.endpoint.tokens import NEW_TOKEN, RETRY_TOKEN, TokenCache, TokenSealer
from quicflow.transport.config import Configuration
from quicflow.transport.events import ConnectionTerminated, NewTokenReceived
from quicflow.transport.state import DRAINING
from quicflow.wire.packet import RETRY, parse_header
from tests.support.memory_pair import _CERT, CLIENT_ADDR, SERVER_ADDR, MemoryPair

KEY = bytes(range(32))


def server_config(**kw: object) -> Configuration:
    cert, key = _CERT
    kw.setdefault("token_key", KEY)
    return Configuration(alpn_protocols=["perf"], certificate_chain=[cert], private_key=key,
                         **kw)  # type: ignore[arg-type]


def client_config(**kw: object) -> Configuration:
    return Configuration(alpn_protocols=["perf"], verify_peer=False, **kw)  # type: ignore[arg-type]


def _echo_transfer(pair: MemoryPair, size: int = 200_000) -> None:
    data = hashlib.sha256(b"x").digest() * (size // 32)
    sid = pair.client.open_stream()
    pair.client.send_stream_data(sid, data, end_stream=True)
    got = bytearray()
    server = pair.server_conns[0]

    def done() -> bool:
        got.extend(server.read_stream(sid))
        return server.stream_at_eof(sid) and len(got) == len(data)

    pair.run(done)
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


def test_retry_always_then_handshake_and_transfer() -> None:
    pair = MemoryPair(server_config=server_config(retry="always"))
    pair.run(lambda: pair.client.handshake_complete)
    adm = pair.server.admission.counters
    assert adm.retries_sent == 1 and adm.retry_tokens_accepted == 1
    assert pair.client.retry_scid is not None
    server = pair.server_conns[0]
    assert server.retry_scid == pair.client.retry_scid
    assert server.original_dcid == pair.client.original_dcid
    assert server.address_validated  # by the token: no 3x limit from the first packet
    _echo_transfer(pair)


def test_retry_never_and_load_below_threshold_send_none() -> None:
    for policy in ("never", "load"):
        pair = MemoryPair(server_config=server_config(retry=policy))
        pair.run(lambda p=pair: p.client.handshake_complete)
        assert pair.server.admission.counters.retries_sent == 0
        assert pair.client.retry_scid is None


def test_retry_load_above_threshold() -> None:
    pair = MemoryPair(server_config=server_config(retry="load", retry_threshold=1))
    second = pair.add_client()
    pair.run(lambda: pair.client.handshake_complete and second.handshake_complete)
    # the first Initial is admitted, the second finds one half-open connection: Retry
    assert pair.server.admission.counters.retries_sent == 1
    assert (pair.client.retry_scid is None) != (second.retry_scid is None)


def _client_with_token(pair: MemoryPair) -> bytes:
    tokens: list[bytes] = []

    def got_token() -> bool:
        for e in pair.client.pop_events():
            if isinstance(e, NewTokenReceived):
                tokens.append(e.token)
                pair.client_ep.store_token(pair.client, e.token)
        return bool(tokens)

    pair.run(got_token)
    return tokens[0]


def test_new_token_skips_retry_on_the_next_connection() -> None:
    cache = TokenCache()
    pair = MemoryPair(server_config=server_config(retry="always"),
                      client_config=client_config(token_cache=cache))
    token = _client_with_token(pair)
    assert token[0] == NEW_TOKEN and len(cache) == 1
    # a second connection to the same server takes the token from the cache
    second = pair.add_client()
    assert second.token == token and len(cache) == 0
    pair.run(lambda: second.handshake_complete)
    adm = pair.server.admission.counters
    assert adm.new_tokens_accepted == 1
    assert adm.retries_sent == 1  # only the first connection's
    assert second.retry_scid is None


def test_token_from_another_endpoint_with_the_same_key() -> None:
    """Workers and hosts behind one address share the key: a token sealed by one is
    accepted by another (other process, other clock base)."""
    a = Endpoint(server_config(), is_server=True)
    b = Endpoint(server_config(), is_server=True)
    a.wall_offset, b.wall_offset = 1_700_000_000.0, 1_700_000_100.0 - 50.0
    token = a.admission.new_token(CLIENT_ADDR, 10.0 + a.wall_offset)
    opened = b.admission.sealer.open(token, (CLIENT_ADDR[0], 1234), 60.0 + b.wall_offset, 3600)
    assert opened == (NEW_TOKEN, b"", b"")
    other = Endpoint(server_config(token_key=b"another key" * 3), is_server=True)
    assert other.admission.sealer.open(token, CLIENT_ADDR, 60.0 + b.wall_offset, 3600) is None


def test_token_checks() -> None:
    sealer = TokenSealer(KEY)
    t = sealer.seal(RETRY_TOKEN, CLIENT_ADDR, b"odcid123", 1000.0, b"rscid456")
    assert sealer.open(t, CLIENT_ADDR, 1005.0, 10.0) == (RETRY_TOKEN, b"odcid123", b"rscid456")
    assert sealer.open(t, CLIENT_ADDR, 1011.0, 10.0) is None  # expired
    host, port = CLIENT_ADDR
    assert sealer.open(t, (host, port + 1), 1005.0, 10.0) is None  # another port
    assert sealer.open(t, ("192.0.2.99", CLIENT_ADDR[1]), 1005.0, 10.0) is None  # another host
    bad = bytearray(t)
    bad[-1] ^= 1
    assert sealer.open(bytes(bad), CLIENT_ADDR, 1005.0, 10.0) is None
    n = sealer.seal(NEW_TOKEN, CLIENT_ADDR, b"", 1000.0)
    assert sealer.open(n, (CLIENT_ADDR[0], 1), 1005.0, 10.0) == (NEW_TOKEN, b"", b"")  # any port
    assert sealer.open(b"garbage" * 9, CLIENT_ADDR, 1005.0, 10.0) is None


def test_invalid_retry_token_closes_with_invalid_token() -> None:
    pair = MemoryPair(server_config=server_config(retry="always"))
    # the client takes a Retry whose token we then corrupt before it goes back
    retry = pair.server
    first = pair.client_ep.datagrams_to_send(pair.client, 0.0)
    for d in first:
        retry.receive(d, CLIENT_ADDR, 0.0)
    replies = retry.pop_stateless()
    assert len(replies) == 1 and parse_header(replies[0][0], 0, 8).packet_type == RETRY
    packet = bytearray(replies[0][0])
    packet[-17] ^= 0xFF  # last token byte; the integrity tag is recomputed below
    from quicflow.crypto.retry import retry_integrity_tag
    from quicflow.wire.packet import retry_pseudo_packet

    body = bytes(packet[:-16])
    tagged = body + retry_integrity_tag(retry_pseudo_packet(pair.client.original_dcid, body))
    pair.client_ep.receive(tagged, SERVER_ADDR, 0.001)
    for d in pair.client_ep.datagrams_to_send(pair.client, 0.002):
        retry.receive(d, CLIENT_ADDR, 0.002)
    assert retry.admission.counters.invalid_retry_tokens == 1
    assert not retry.all_connections  # no state for it
    for d, _ in retry.pop_stateless():
        pair.client_ep.receive(d, SERVER_ADDR, 0.003)
    closes = [e for e in pair.client.pop_events() if isinstance(e, ConnectionTerminated)]
    assert closes and closes[0].error_code == 0x0B and closes[0].by_peer


def test_invalid_new_token_counts_as_no_token() -> None:
    """An expired NEW_TOKEN token (or another server's) is ignored: with retry=never
    the connection opens unvalidated, with retry=always the client gets a Retry."""
    for policy, retries in (("never", 0), ("always", 1)):
        cache = TokenCache()
        stale = TokenSealer(KEY).seal(NEW_TOKEN, CLIENT_ADDR, b"", 0.0)  # 1970: expired
        cache.put(f"localhost:{SERVER_ADDR[1]}", stale)
        pair = MemoryPair(server_config=server_config(retry=policy),
                          client_config=client_config(token_cache=cache))
        assert pair.client.token == stale
        pair.server.wall_offset = 1_800_000_000.0
        pair.run(lambda p=pair: p.client.handshake_complete)
        adm = pair.server.admission.counters
        assert adm.invalid_new_tokens == 1 and adm.new_tokens_accepted == 0
        assert adm.retries_sent == retries


def test_retry_token_with_another_dcid_is_invalid() -> None:
    """A Retry token is bound to the Retry's SCID: an Initial that carries it to another
    DCID (a replay by someone who saw it) is closed with INVALID_TOKEN."""
    server = Endpoint(server_config(retry="always"), is_server=True)
    client = Endpoint(client_config(), is_server=False)
    conn = client.connect(SERVER_ADDR, 0.0, server_name="localhost")
    for d in client.datagrams_to_send(conn, 0.0):
        server.receive(d, CLIENT_ADDR, 0.0)
    retry = server.pop_stateless()[0][0]
    token = parse_header(retry, 0, 8).token
    other = client.connect(SERVER_ADDR, 0.0, server_name="localhost")
    other.token = token  # a fresh connection (its own DCID) replays the token
    for d in client.datagrams_to_send(other, 0.0):
        server.receive(d, CLIENT_ADDR, 0.0)
    assert server.admission.counters.invalid_retry_tokens == 1
    assert not server.all_connections


def test_new_token_is_sealed_when_sent_not_for_a_client_closing_with_its_finished() -> None:
    """The token is made when the server first sends it: a client whose close comes with
    its Finished (the server confirms, then drains) costs no token; one that stays gets
    its token as before."""
    pair = MemoryPair(server_config=server_config())
    adm = pair.server.admission.counters
    while not pair.client.handshake_complete:
        pair.step()
        pair.now += 0.0002
    assert adm.new_tokens_sealed == 0  # nothing was due yet
    finished = pair.client_ep.datagrams_to_send(pair.client, pair.now)
    pair.client.close(0, now=pair.now)
    close = pair.client_ep.datagrams_to_send(pair.client, pair.now)
    assert finished and close
    for d in finished + close:  # one read batch: Finished, then CONNECTION_CLOSE
        pair.server.receive(d, pair.client_addr, pair.now)
    server = pair.server_conns[0]
    assert server.handshake_confirmed and server.state == DRAINING
    assert pair.server.datagrams_to_send(server, pair.now) == []
    assert adm.new_tokens_sealed == 0 and server.new_token == b""

    stays = MemoryPair(server_config=server_config())
    token = _client_with_token(stays)
    assert token[0] == NEW_TOKEN
    assert stays.server.admission.counters.new_tokens_sealed == 1


def test_token_layout_and_a_fresh_nonce_each() -> None:
    """The documented layout (kind | nonce | AES-256-GCM(issued ms | 0 | 0), the kind and
    the client's IP as associated data), decrypted here with the key derived by hand;
    no two tokens share a nonce (the nonces come from a batch of random bytes)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from quicflow.crypto.hkdf import hkdf_expand, hkdf_extract

    h = hashes.SHA256()
    aead = AESGCM(hkdf_expand(h, hkdf_extract(h, b"quicflow address validation", KEY),
                              b"token key", 32))
    sealer = TokenSealer(KEY)
    host = socket.inet_aton(CLIENT_ADDR[0])  # (the address bound into the tokens)
    tokens = [sealer.seal(NEW_TOKEN, CLIENT_ADDR, b"", 1000.25) for _ in range(200)]
    assert len({t[1:13] for t in tokens}) == len(tokens)
    for t in tokens:
        assert t[0] == NEW_TOKEN and len(t) == 1 + 12 + 10 + 16
        plain = aead.decrypt(t[1:13], t[13:], bytes((NEW_TOKEN,)) + host)
        assert plain == (1000250).to_bytes(8, "big") + b"\x00\x00"
    r = sealer.seal(RETRY_TOKEN, CLIENT_ADDR, b"odcid123", 1000.0, b"rscid4")
    plain = aead.decrypt(r[1:13], r[13:], bytes((RETRY_TOKEN,)) + host
                         + CLIENT_ADDR[1].to_bytes(2, "big"))
    assert plain == (1000000).to_bytes(8, "big") + b"\x08odcid123\x06rscid4"
def test_token_nonces_are_never_repeated_and_every_token_opens() -> None:
    """Token nonces come from batched os.urandom reads (endpoint.cids.random_part): each
    of many tokens has its own 12-byte nonce, across batch refills, and opens."""
    sealer = TokenSealer(KEY)
    addr = ("192.0.2.7", 4433)
    tokens = [sealer.seal(NEW_TOKEN, addr, b"", 1000.0) for _ in range(300)]
    nonces = {t[1:13] for t in tokens}
    assert len(nonces) == len(tokens)
    assert all(sealer.open(t, addr, 1000.5, 60.0) == (NEW_TOKEN, b"", b"") for t in tokens)


def test_a_client_discards_a_retry_without_token_or_with_its_own_dcid() -> None:
    """RFC 9000 §17.2.5.2: a Retry with an empty token, or whose SCID is the DCID of the
    client's Initial, is discarded (counted) even with a valid integrity tag; the
    connection goes on as if it had not come, and a proper Retry is still followed."""
    pair = MemoryPair(seed=21)
    client = pair.client
    (initial, *_) = pair.client_ep.datagrams_to_send(client, pair.now)
    assert initial[0] & 0x80
    for scid, token in ((b"\x42" * 8, b""), (client.original_dcid, b"a token")):
        bad = retry_packet(client.initial_scid, client.original_dcid, scid, token)
        pair.client_ep.receive(bad, SERVER_ADDR, pair.now)
        assert client.retry_scid is None
    assert client.counters.dropped_bad_retry == 2
    good = retry_packet(client.initial_scid, client.original_dcid, b"\x43" * 8, b"a token")
    pair.client_ep.receive(good, SERVER_ADDR, pair.now)
    assert client.retry_scid == b"\x43" * 8 and client.token == b"a token"
