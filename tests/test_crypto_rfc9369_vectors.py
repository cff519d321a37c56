"""RFC 9369 (QUIC version 2) Appendix A sample packet protection, byte for byte: Initial
secrets from the v2 salt, "quicv2" labels, the permuted long-header type bits, the v2
Retry integrity key, and the ChaCha20 short header through both offload engines."""

from __future__ import annotations

import pytest

from quicflow.crypto import (
    INITIAL_SUITE,
    CipherSuite,
    PacketProtector,
    derive_packet_keys,
    initial_secrets,
    native,
    retry_integrity_tag,
    verify_retry_integrity_tag,
)
from quicflow.crypto.keys import QUIC_V2, derive_hp_key, derive_key_iv
from quicflow.crypto.offload import OffloadEngine, SoftwareOffloadEngine
from quicflow.wire.packet import (
    HANDSHAKE,
    INITIAL,
    RETRY,
    ZERO_RTT,
    build_long_header,
    build_retry,
    parse_header,
    retry_pseudo_packet,
)
from tests.support.prereq import require

DCID = bytes.fromhex("8394c8f03e515708")

# A.1
CLIENT_SECRET = "14ec9d6eb9fd7af83bf5a668bc17a7e283766aade7ecd0891f70f9ff7f4bf47b"
SERVER_SECRET = "0263db1782731bf4588e7e4d93b7463907cb8cd8200b5da55a8bd488eafc37c1"

# A.2 (the same ClientHello as RFC 9001 A.2)
CLIENT_HEADER = bytes.fromhex("d36b3343cf088394c8f03e5157080000449e00000002")
CLIENT_CRYPTO_FRAME = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff"
)
CLIENT_PAYLOAD = CLIENT_CRYPTO_FRAME + bytes(1162 - len(CLIENT_CRYPTO_FRAME))
CLIENT_PACKET = bytes.fromhex(
    "d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485"
    "dd04de806071bf03dceebfa162e75d6c96058bdbfb127cdfcbf903388e99ad04"
    "9f9a3dd4425ae4d0992cfff18ecf0fdb5a842d09747052f17ac2053d21f57c5d"
    "250f2c4f0e0202b70785b7946e992e58a59ac52dea6774d4f03b55545243cf1a"
    "12834e3f249a78d395e0d18f4d766004f1a2674802a747eaa901c3f10cda5500"
    "cb9122faa9f1df66c392079a1b40f0de1c6054196a11cbea40afb6ef5253cd68"
    "18f6625efce3b6def6ba7e4b37a40f7732e093daa7d52190935b8da58976ff33"
    "12ae50b187c1433c0f028edcc4c2838b6a9bfc226ca4b4530e7a4ccee1bfa2a3"
    "d396ae5a3fb512384b2fdd851f784a65e03f2c4fbe11a53c7777c023462239dd"
    "6f7521a3f6c7d5dd3ec9b3f233773d4b46d23cc375eb198c63301c21801f6520"
    "bcfb7966fc49b393f0061d974a2706df8c4a9449f11d7f3d2dcbb90c6b877045"
    "636e7c0c0fe4eb0f697545460c806910d2c355f1d253bc9d2452aaa549e27a1f"
    "ac7cf4ed77f322e8fa894b6a83810a34b361901751a6f5eb65a0326e07de7c12"
    "16ccce2d0193f958bb3850a833f7ae432b65bc5a53975c155aa4bcb4f7b2c4e5"
    "4df16efaf6ddea94e2c50b4cd1dfe06017e0e9d02900cffe1935e0491d77ffb4"
    "fdf85290fdd893d577b1131a610ef6a5c32b2ee0293617a37cbb08b847741c3b"
    "8017c25ca9052ca1079d8b78aebd47876d330a30f6a8c6d61dd1ab5589329de7"
    "14d19d61370f8149748c72f132f0fc99f34d766c6938597040d8f9e2bb522ff9"
    "9c63a344d6a2ae8aa8e51b7b90a4a806105fcbca31506c446151adfeceb51b91"
    "abfe43960977c87471cf9ad4074d30e10d6a7f03c63bd5d4317f68ff325ba3bd"
    "80bf4dc8b52a0ba031758022eb025cdd770b44d6d6cf0670f4e990b22347a7db"
    "848265e3e5eb72dfe8299ad7481a408322cac55786e52f633b2fb6b614eaed18"
    "d703dd84045a274ae8bfa73379661388d6991fe39b0d93debb41700b41f90a15"
    "c4d526250235ddcd6776fc77bc97e7a417ebcb31600d01e57f32162a8560cacc"
    "7e27a096d37a1a86952ec71bd89a3e9a30a2a26162984d7740f81193e8238e61"
    "f6b5b984d4d3dfa033c1bb7e4f0037febf406d91c0dccf32acf423cfa1e70710"
    "10d3f270121b493ce85054ef58bada42310138fe081adb04e2bd901f2f13458b"
    "3d6758158197107c14ebb193230cd1157380aa79cae1374a7c1e5bbcb80ee23e"
    "06ebfde206bfb0fcbc0edc4ebec309661bdd908d532eb0c6adc38b7ca7331dce"
    "8dfce39ab71e7c32d318d136b6100671a1ae6a6600e3899f31f0eed19e3417d1"
    "34b90c9058f8632c798d4490da4987307cba922d61c39805d072b589bd52fdf1"
    "e86215c2d54e6670e07383a27bbffb5addf47d66aa85a0c6f9f32e59d85a44dd"
    "5d3b22dc2be80919b490437ae4f36a0ae55edf1d0b5cb4e9a3ecabee93dfc6e3"
    "8d209d0fa6536d27a5d6fbb17641cde27525d61093f1b28072d111b2b4ae5f89"
    "d5974ee12e5cf7d5da4d6a31123041f33e61407e76cffcdcfd7e19ba58cf4b53"
    "6f4c4938ae79324dc402894b44faf8afbab35282ab659d13c93f70412e85cb19"
    "9a37ddec600545473cfb5a05e08d0b209973b2172b4d21fb69745a262ccde96b"
    "a18b2faa745b6fe189cf772a9f84cbfc"
)

# A.3
SERVER_HEADER = bytes.fromhex("d16b3343cf0008f067a5502a4262b50040750001")
SERVER_PAYLOAD = bytes.fromhex(
    "02000000000600405a020000560303eefce7f7b37ba1d1632e96677825ddf739"
    "88cfc79825df566dc5430b9a045a1200130100002e00330024001d00209d3c94"
    "0d89690b84d08a60993c144eca684d1081287c834d5311bcf32bb9da1a002b00"
    "020304"
)
SERVER_PACKET = bytes.fromhex(
    "dc6b3343cf0008f067a5502a4262b5004075d92faaf16f05d8a4398c47089698"
    "baeea26b91eb761d9b89237bbf87263017915358230035f7fd3945d88965cf17"
    "f9af6e16886c61bfc703106fbaf3cb4cfa52382dd16a393e42757507698075b2"
    "c984c707f0a0812d8cd5a6881eaf21ceda98f4bd23f6fe1a3e2c43edd9ce7ca8"
    "4bed8521e2e140"
)

# A.4
RETRY_PACKET = bytes.fromhex(
    "cf6b3343cf0008f067a5502a4262b5746f6b656ec8646ce8bfe33952d955543665dcc7b6"
)

# A.5
CHACHA_SECRET = bytes.fromhex(
    "9ac312a7f877468ebe69422748ad00a15443f18203a07d6060f688f30f21632b"
)
CHACHA_PN = 654360564
CHACHA_HEADER = bytes.fromhex("4200bff4")
CHACHA_PACKET = bytes.fromhex("5558b1c60ae7b6b932bc27d786f4bc2bb20f2162ba")


def test_a1_initial_secrets_and_keys() -> None:
    client, server = initial_secrets(DCID, QUIC_V2)
    assert client.hex() == CLIENT_SECRET and server.hex() == SERVER_SECRET
    ck = derive_packet_keys(INITIAL_SUITE, client, QUIC_V2)
    assert ck.key.hex() == "8b1a0bc121284290a29e0971b5cd045d"
    assert ck.iv.hex() == "91f73e2351d8fa91660e909f"
    assert ck.hp_key.hex() == "45b95e15235d6f45a6b19cbcb0294ba9"
    sk = derive_packet_keys(INITIAL_SUITE, server, QUIC_V2)
    assert sk.key.hex() == "82db637861d55e1d011f19ea71d5d2a7"
    assert sk.iv.hex() == "dd13c276499c0249d3310652"
    assert sk.hp_key.hex() == "edf6d05c83121201b436e16877593c3a"
    # the split derivations the engines use take the version's labels too
    assert derive_key_iv(INITIAL_SUITE, client, QUIC_V2) == (ck.key, ck.iv)
    assert derive_hp_key(INITIAL_SUITE, server, QUIC_V2) == sk.hp_key


def _initial(secret: str) -> PacketProtector:
    return PacketProtector(derive_packet_keys(INITIAL_SUITE, bytes.fromhex(secret), QUIC_V2))


def test_a2_client_initial() -> None:
    assert build_long_header(INITIAL, QUIC_V2, DCID, b"", b"", 1182, 2, 4) == CLIENT_HEADER
    assert _initial(CLIENT_SECRET).seal(CLIENT_HEADER, CLIENT_PAYLOAD, 2) == CLIENT_PACKET
    hdr = parse_header(CLIENT_PACKET, 0, 8)
    assert hdr.packet_type == INITIAL and hdr.version == QUIC_V2 and hdr.dcid == DCID
    header, payload, pn = _initial(CLIENT_SECRET).open(CLIENT_PACKET, hdr.pn_offset, -1)
    assert (header, payload, pn) == (CLIENT_HEADER, CLIENT_PAYLOAD, 2)


def test_a3_server_initial() -> None:
    scid = bytes.fromhex("f067a5502a4262b5")
    assert build_long_header(INITIAL, QUIC_V2, b"", scid, b"", 0x75, 1, 2) == SERVER_HEADER
    assert _initial(SERVER_SECRET).seal(SERVER_HEADER, SERVER_PAYLOAD, 1) == SERVER_PACKET
    hdr = parse_header(SERVER_PACKET, 0, 8)
    assert hdr.packet_type == INITIAL and hdr.scid == scid
    assert _initial(SERVER_SECRET).open(SERVER_PACKET, hdr.pn_offset, -1)[1] == SERVER_PAYLOAD


def test_a4_retry() -> None:
    hdr = parse_header(RETRY_PACKET, 0, 8)
    assert hdr.packet_type == RETRY and hdr.token == b"token"
    assert build_retry(QUIC_V2, b"", hdr.scid, b"token", b"", unused_bits=0xF) == RETRY_PACKET[:-16]
    pseudo = retry_pseudo_packet(DCID, RETRY_PACKET[:-16])
    assert retry_integrity_tag(pseudo, QUIC_V2) == RETRY_PACKET[-16:]
    assert verify_retry_integrity_tag(pseudo, RETRY_PACKET[-16:], QUIC_V2)
    assert not verify_retry_integrity_tag(pseudo, RETRY_PACKET[-16:])  # the v1 key


def test_v2_type_bits_are_permuted() -> None:
    for ptype, bits in ((INITIAL, 1), (ZERO_RTT, 2), (HANDSHAKE, 3)):
        header = build_long_header(ptype, QUIC_V2, DCID, b"", b"", 20, 0, 1)
        assert (header[0] >> 4) & 3 == bits
        assert parse_header(header + bytes(20), 0, 8).packet_type == ptype


def test_a5_chacha_short_header() -> None:
    keys = derive_packet_keys(CipherSuite.CHACHA20_POLY1305_SHA256, CHACHA_SECRET, QUIC_V2)
    assert keys.key.hex() == "3bfcddd72bcf02541d7fa0dd1f5f9eeea817e09a6963a0e6c7df0f9a1bab90f2"
    assert keys.iv.hex() == "a6b5bc6ab7dafce30ffff5dd"
    assert keys.hp_key.hex() == "d659760d2ba434a226fd37b35c69e2da8211d10c4f12538787d65645d5d1b8e2"
    assert PacketProtector(keys).seal(CHACHA_HEADER, b"\x01", CHACHA_PN) == CHACHA_PACKET


def _engine(name: str) -> OffloadEngine:
    if name == "native":
        require(native.available(), "native crypto extension not built")
        return native.NativeOffloadEngine()
    return SoftwareOffloadEngine()


@pytest.mark.parametrize("name", ["software", "native"])
def test_a5_through_the_offload_engine(name: str) -> None:
    """Each engine seals and opens the v2 1-RTT packet byte for byte."""
    suite = CipherSuite.CHACHA20_POLY1305_SHA256
    sealer = _engine(name)
    sealer.install(b"", suite, CHACHA_SECRET, opener=False, version=QUIC_V2)
    buf = bytearray(CHACHA_HEADER + b"\x01" + bytes(16))
    sealer.seal(buf, [(0, 4, 1, CHACHA_PN, b"")])
    assert bytes(buf) == CHACHA_PACKET
    opener = _engine(name)
    opener.install(b"", suite, CHACHA_SECRET, opener=True, largest_pn=CHACHA_PN - 1,
                   version=QUIC_V2)
    result = opener.open(CHACHA_PACKET, [(0, len(CHACHA_PACKET), b"")])[0]
    assert result is not None and result.payload == b"\x01" and result.pn == CHACHA_PN


def test_v2_key_update_native_matches_software() -> None:
    """After key updates the native engine ("quicv2 ku" in C) seals exactly what the
    software engine does, and not what v1 labels would give."""
    require(native.available(), "native crypto extension not built")
    suite = CipherSuite.CHACHA20_POLY1305_SHA256
    out = {}
    for name, version in (("software", QUIC_V2), ("native", QUIC_V2), ("v1", 1)):
        engine = _engine("native" if name == "v1" else name)
        engine.install(b"", suite, CHACHA_SECRET, opener=False, version=version)
        engine.update(b"", opener=False)
        engine.update(b"", opener=False)
        buf = bytearray(CHACHA_HEADER + b"\x01" + bytes(16))
        engine.seal(buf, [(0, 4, 1, CHACHA_PN, b"")])
        out[name] = bytes(buf)
    assert out["software"] == out["native"] != out["v1"]
