"""Helpers for quicflow's tests: a lossy UDP relay and network namespaces."""
