"""QUIC-LB CIDs against draft-ietf-quic-load-balancers-21 Appendix (Test Vectors),
plus round trips of the generator for every mode."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quicflow.endpoint.cids import CidGenerator, RandomCidGenerator
from quicflow.endpoint.quiclb import (
    QuicLbConfig,
    ServerIdLayout,
    decode_server_id,
    encode_cid,
)

VECTOR_KEY = bytes.fromhex("8f95f09245765f80256934e50c66207f")


def _check(config_id: int, sid: str, nonce: str, key: bytes | None, cid: str) -> None:
    s, n = bytes.fromhex(sid), bytes.fromhex(nonce)
    cfg = QuicLbConfig(config_id=config_id, server_id_len=len(s), nonce_len=len(n), key=key)
    assert encode_cid(cfg, s, n).hex() == cid
    assert decode_server_id(cfg, bytes.fromhex(cid)) == s


def test_plaintext_vectors() -> None:
    _check(0, "c4605e", "4504cc4f", None, "07c4605e4504cc4f")
    assert QuicLbConfig(server_id_len=3, nonce_len=4).mode == "plaintext"


def test_plaintext_vector_with_config_rotation() -> None:
    # The draft prints this row as "350d28b420 3487d970b 20a350d28b4203487d970b": an
    # odd number of hex digits (a nibble was lost when the rotation bits moved to 3). What
    # the row does fix: first octet 0x2a (config 1, 10 bytes follow), then the server ID
    # in the clear.
    sid = bytes.fromhex("350d28b420")
    cfg = QuicLbConfig(config_id=1, server_id_len=5, nonce_len=5)
    cid = encode_cid(cfg, sid, bytes.fromhex("03487d970b"))
    assert cid.hex().startswith("2a350d28b420")
    assert decode_server_id(cfg, cid) == sid


def test_four_pass_vector_sid_shorter_than_nonce() -> None:
    _check(0, "ed793a", "ee080dbf", VECTOR_KEY, "0720b1d07b359d3c")


def test_four_pass_vector_sid_longer_than_nonce() -> None:
    _check(1, "ed793a51d49b8f5fab65", "ee080dbf48", VECTOR_KEY, "2fcc381bc74cb4fbad2823a3d1f8fed2")
    cfg = QuicLbConfig(config_id=1, server_id_len=10, nonce_len=5, key=VECTOR_KEY)
    assert cfg.mode == "four-pass"


def test_single_pass_vector() -> None:
    _check(
        2, "ed793a51d49b8f5f", "ee080dbf48c0d1e5", VECTOR_KEY, "504dd2d05a7b0de9b2b9907afb5ecf8cc3"
    )
    cfg = QuicLbConfig(config_id=2, server_id_len=8, nonce_len=8, key=VECTOR_KEY)
    assert cfg.mode == "single-pass"


def test_four_pass_vector_odd_length() -> None:
    # The draft labels this row cr_bits 3, but its first octet 0x12 carries config 0.
    _check(
        0,
        "ed793a51d49b8f5fab",
        "ee080dbf48c0d1e55d",
        VECTOR_KEY,
        "125779c9cc86beb3a3a4a3ca96fce4bfe0cdbc",
    )


def test_four_pass_worked_example() -> None:
    # Section 5.4.2.4 "Encryption Example": 7-byte (odd) plaintext.
    _check(
        0,
        "31441a",
        "9c69c275",
        bytes.fromhex("fdf726a9893ec05c0632d3956680baf0"),
        "0767947d29be054a",
    )


def test_wrong_config_or_length_does_not_decode() -> None:
    cfg = QuicLbConfig(config_id=0, server_id_len=3, nonce_len=4, key=VECTOR_KEY)
    assert decode_server_id(cfg, bytes.fromhex("2720b1d07b359d3c")) is None  # config 1
    assert decode_server_id(cfg, bytes.fromhex("0720b1d07b359d")) is None  # short


@pytest.mark.parametrize(
    "kwargs",
    [
        {"config_id": 7},
        {"server_id_len": 0},
        {"nonce_len": 3},
        {"server_id_len": 10, "nonce_len": 10},
        {"key": b"short"},
    ],
)
def test_invalid_configs_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        QuicLbConfig(**kwargs)  # type: ignore[arg-type]


def test_length_not_self_encoded_keeps_config_bits() -> None:
    cfg = QuicLbConfig(config_id=3, server_id_len=2, nonce_len=5)
    cids = {encode_cid(cfg, b"\x01\x02", bytes(5), length_self_encoded=False) for _ in range(64)}
    assert all(c[0] >> 5 == 3 for c in cids)
    assert len({c[0] & 0x1F for c in cids}) > 1  # random low bits


def test_server_id_layout_puts_worker_byte_last() -> None:
    layout = ServerIdLayout(host_id=0x0102, host_id_len=2, worker_id=7, worker_id_len=1)
    assert layout.server_id() == b"\x01\x02\x07"
    gen = CidGenerator.from_layout(layout)
    cid = gen.generate()
    assert cid[layout.worker_cid_offset] == 7
    assert layout.worker_cid_offset == 3
    assert ServerIdLayout().server_id() == b"\x00\x00"
    with pytest.raises(ValueError):
        ServerIdLayout(worker_id=256)


_modes = st.sampled_from([None, VECTOR_KEY])


@st.composite
def _configs(draw: st.DrawFn) -> QuicLbConfig:
    key = draw(_modes)
    sid_len = draw(st.integers(1, 15))
    nonce_len = draw(st.integers(4, 19 - sid_len))
    if key is not None and draw(st.booleans()) and sid_len <= 12:
        nonce_len = 16 - sid_len  # the single-pass case
    return QuicLbConfig(draw(st.integers(0, 6)), sid_len, nonce_len, key)


@settings(max_examples=300, deadline=None)
@given(cfg=_configs(), data=st.data())
def test_round_trip_every_mode(cfg: QuicLbConfig, data: st.DataObject) -> None:
    sid = data.draw(st.binary(min_size=cfg.server_id_len, max_size=cfg.server_id_len))
    nonce = data.draw(st.binary(min_size=cfg.nonce_len, max_size=cfg.nonce_len))
    cid = encode_cid(cfg, sid, nonce)
    assert len(cid) == cfg.cid_len
    assert cid[0] == (cfg.config_id << 5) | (cfg.cid_len - 1)
    assert decode_server_id(cfg, cid) == sid


@settings(max_examples=200, deadline=None)
@given(cfg=_configs(), data=st.data())
def test_generator_recognises_only_its_own(cfg: QuicLbConfig, data: st.DataObject) -> None:
    size = cfg.server_id_len
    mine = data.draw(st.binary(min_size=size, max_size=size))
    other = data.draw(st.binary(min_size=size, max_size=size).filter(lambda b: b != mine))
    gen = CidGenerator(cfg, mine)
    cid = gen.generate()
    assert gen.is_ours(cid) and gen.server_id_of(cid) == mine
    theirs = gen.generate_for(other)
    assert not gen.is_ours(theirs) and gen.server_id_of(theirs) == other
    # Same server ID under another config id, or another length: not ours.
    other_cfg = QuicLbConfig((cfg.config_id + 1) % 7, cfg.server_id_len, cfg.nonce_len, cfg.key)
    assert not gen.is_ours(CidGenerator(other_cfg, mine).generate())
    assert not gen.is_ours(cid[:-1])
    assert not gen.is_ours(b"")


def test_random_generator_shape() -> None:
    gen = RandomCidGenerator(0)
    assert gen.generate() == b"" and gen.is_ours(b"") and gen.cid_length == 0
    gen8 = RandomCidGenerator(8)
    a, b = gen8.generate(), gen8.generate()
    assert len(a) == 8 and a != b and gen8.is_ours(a) and not gen8.is_ours(a[:4])
    with pytest.raises(ValueError):
        RandomCidGenerator(21)
