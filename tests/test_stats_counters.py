"""stats() dicts: the counters dataclasses copied field by field give what asdict gave."""

from __future__ import annotations

import dataclasses

import pytest

from quicflow.aio.stats import counter_values
from quicflow.datapath.backends import DatapathCounters
from quicflow.datapath.connected import ConnectedSocketCounters
from quicflow.endpoint.admission import AdmissionCounters
from quicflow.endpoint.endpoint import EndpointCounters
from quicflow.transport.connection import ConnectionCounters

COUNTERS = [ConnectionCounters, EndpointCounters, AdmissionCounters, DatapathCounters,
            ConnectedSocketCounters]


@pytest.mark.parametrize("cls", COUNTERS, ids=lambda c: c.__name__)
def test_counter_values_equal_asdict(cls: type) -> None:
    counters = cls()
    for i, f in enumerate(dataclasses.fields(cls)):
        setattr(counters, f.name, 1000 + 7 * i)  # every field a distinct value
    assert counter_values(counters) == dataclasses.asdict(counters)
    assert list(counter_values(counters)) == [f.name for f in dataclasses.fields(cls)]
    # a copy: counting on does not change a dict already handed out
    before = counter_values(counters)
    first = dataclasses.fields(cls)[0].name
    setattr(counters, first, getattr(counters, first) + 1)
    assert before[first] == 1000


@pytest.mark.parametrize("cls", COUNTERS, ids=lambda c: c.__name__)
def test_counters_hold_numbers_only(cls: type) -> None:
    """counter_values copies no nested containers (asdict would deep-copy them): a
    counters class that gains a list or dict field needs asdict again."""
    for f in dataclasses.fields(cls):
        assert f.type in ("int", "float", int, float), (cls.__name__, f.name, f.type)
