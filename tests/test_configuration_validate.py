"""Configuration.validate, run for every new connection: each bad value still raises
ValueError with its message (and good ones pass)."""

from __future__ import annotations

import pytest

from quicflow.transport.config import Configuration
from quicflow.transport.factory import server_connection


def test_versions_must_be_known_quic_versions() -> None:
    Configuration(alpn_protocols=["x"], versions=[1, 0x6B3343CF]).validate()
    Configuration(alpn_protocols=["x"], versions=[0x6B3343CF]).validate()
    for bad in ([], [0x1234], [1, 0xFF00001D], [0]):
        with pytest.raises(ValueError, match="versions must list"):
            Configuration(alpn_protocols=["x"], versions=bad).validate()


def test_preferred_addresses_are_checked() -> None:
    Configuration(alpn_protocols=["x"], preferred_address=("127.0.0.2", 4433),
                  preferred_address_v6=("::1", 4433)).validate()
    with pytest.raises(ValueError, match="preferred_address must be"):
        Configuration(alpn_protocols=["x"], preferred_address=("::1", 4433)).validate()
    with pytest.raises(ValueError, match="preferred_address_v6 must be"):
        Configuration(alpn_protocols=["x"], preferred_address_v6=("::1", 0)).validate()


def test_a_connection_is_refused_for_a_bad_configuration() -> None:
    cfg = Configuration(alpn_protocols=["x"], versions=[0x1234])
    with pytest.raises(ValueError, match="versions must list"):
        server_connection(cfg, ("127.0.0.1", 1), b"\x01" * 8, 0.0)
