"""An address validation token sealed in one C call (crypto/_native_src/ticket.c,
``address_token``) is byte for byte the token of TokenSealer.seal's Python steps, or C
declines (None) and the Python steps run with their error; the server's NEW_TOKEN and
Retry tokens come from C when the extension is there, and open."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicflow.crypto.extension import EXT
from quicflow.endpoint import tokens
from quicflow.endpoint.tokens import NEW_TOKEN, RETRY_TOKEN, TokenSealer

KEY = bytes(range(32))
NONCE = bytes(range(100, 112))


def native_seal() -> Any:
    fn = getattr(EXT, "address_token", None) if EXT is not None else None
    assert fn is not None, "the native extension (address_token) is needed"
    return fn


def python_steps(sealer: TokenSealer, *args: Any) -> object:
    """TokenSealer.seal without the C call: its bytes, or its error."""
    saved = tokens._NATIVE_SEAL
    tokens._NATIVE_SEAL = None
    try:
        return sealer.seal(*args)
    except Exception as exc:  # noqa: BLE001 - the reference's error: C must leave it
        return type(exc)
    finally:
        tokens._NATIVE_SEAL = saved


def c_then_python(sealer: TokenSealer, *args: Any) -> object:
    saved = tokens._NATIVE_SEAL
    tokens._NATIVE_SEAL = native_seal()
    try:
        return sealer.seal(*args)
    except Exception as exc:  # noqa: BLE001
        return type(exc)
    finally:
        tokens._NATIVE_SEAL = saved


@pytest.fixture
def fixed_nonce(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens, "random_part", lambda n: NONCE[:n])


addresses = st.one_of(
    st.tuples(st.sampled_from(["127.0.0.1", "::1", "192.0.2.7", "2001:db8::5", "localhost"]),
              st.integers(0, 65535)),
    st.tuples(st.just("10.1.2.3"), st.integers(0, 65535), st.integers(0, 3), st.integers(0, 3)),
)


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # (the nonce stays)
@given(
    key=st.binary(min_size=1, max_size=40),
    kind=st.one_of(st.sampled_from([NEW_TOKEN, RETRY_TOKEN]), st.integers(-2, 300)),
    address=addresses,
    odcid=st.one_of(st.binary(max_size=20), st.binary(min_size=250, max_size=300)),
    retry_scid=st.one_of(st.binary(max_size=20), st.binary(min_size=250, max_size=300)),
    wall=st.one_of(st.floats(0, 4e9), st.floats(-10, 10), st.sampled_from([1.9e16, 2e16, 1e30])),
)
def test_c_token_is_the_python_token(fixed_nonce: None, key: bytes, kind: int,
                                     address: tuple[Any, ...], odcid: bytes,
                                     retry_scid: bytes, wall: float) -> None:
    sealer = TokenSealer(key)
    expected = python_steps(sealer, kind, address, odcid, wall, retry_scid)
    assert c_then_python(sealer, kind, address, odcid, wall, retry_scid) == expected
    if isinstance(expected, bytes) and 0 <= kind <= 255:  # C itself gave these bytes
        aad = tokens._KIND[kind] + tokens._address_bytes(address, kind == RETRY_TOKEN)
        assert native_seal()(sealer._aead_key, kind, NONCE, int(wall * 1000), odcid,
                             retry_scid, aad) == expected
        if kind in (NEW_TOKEN, RETRY_TOKEN) and wall < 1e12:
            assert sealer.open(expected, address, wall, 60.0) == (kind, odcid, retry_scid)


def test_c_declines_what_does_not_fit(fixed_nonce: None) -> None:
    """None from C exactly where the Python steps raise (or the sizes differ)."""
    fn = native_seal()
    key32 = bytes(32)
    assert fn(key32, NEW_TOKEN, NONCE, -1, b"", b"", b"N") is None  # negative time
    assert fn(key32, NEW_TOKEN, NONCE, 2**64, b"", b"", b"N") is None
    assert fn(key32, 256, NONCE, 0, b"", b"", b"N") is None
    assert fn(key32, -1, NONCE, 0, b"", b"", b"N") is None
    assert fn(key32, RETRY_TOKEN, NONCE, 0, bytes(256), b"", b"R") is None
    assert fn(key32, RETRY_TOKEN, NONCE, 0, b"", bytes(256), b"R") is None
    assert fn(bytes(31), NEW_TOKEN, NONCE, 0, b"", b"", b"N") is None
    assert fn(key32, NEW_TOKEN, NONCE[:11], 0, b"", b"", b"N") is None
    sealer = TokenSealer(KEY)
    assert python_steps(sealer, RETRY_TOKEN, ("127.0.0.1", 1), bytes(256), 0.0) is ValueError
    assert python_steps(sealer, NEW_TOKEN, ("127.0.0.1", 1), b"", -1.0) is OverflowError


def test_sealers_taking_turns_keep_their_keys(fixed_nonce: None) -> None:
    """The C side keeps one key schedule: sealers with other keys (and tickets sealed in
    between) still get tokens under their own key."""
    native_seal()
    sealers = [TokenSealer(bytes([i]) * 32) for i in range(3)]
    for _ in range(3):
        for s in sealers:
            got = s.seal(NEW_TOKEN, ("192.0.2.7", 4433), b"", 1000.0)
            assert got == python_steps(s, NEW_TOKEN, ("192.0.2.7", 4433), b"", 1000.0)
            assert s.open(got, ("192.0.2.7", 9), 1000.5, 60.0) == (NEW_TOKEN, b"", b"")
            assert all(o.open(got, ("192.0.2.7", 9), 1000.5, 60.0) is None
                       for o in sealers if o is not s)


def test_server_tokens_come_from_c(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server's Retry and NEW_TOKEN tokens are sealed by the C call (when built), and
    the handshake after the Retry completes with them."""
    from quicflow.transport.events import NewTokenReceived
    from tests.support.memory_pair import CLIENT_ADDR, MemoryPair
    from tests.test_retry_tokens import client_config, server_config

    fn = native_seal()
    calls: list[int] = []

    def counting(*args: Any) -> Any:
        calls.append(args[1])
        return fn(*args)

    counted: Callable[..., Any] = counting
    monkeypatch.setattr(tokens, "_NATIVE_SEAL", counted)
    pair = MemoryPair(client_config=client_config(), server_config=server_config(retry="always"))
    got: list[bytes] = []

    def token_arrived() -> bool:
        got.extend(e.token for e in pair.client.pop_events() if isinstance(e, NewTokenReceived))
        return bool(got)

    pair.run(token_arrived)
    assert pair.server.admission.counters.retry_tokens_accepted == 1
    assert calls.count(RETRY_TOKEN) == 1 and calls.count(NEW_TOKEN) == 1
    # the NEW_TOKEN token opens for the client's address (any port)
    opened = pair.server.admission.sealer.open(got[0], (CLIENT_ADDR[0], 1), 1e12, 1e13)
    assert opened is not None and opened[0] == NEW_TOKEN
