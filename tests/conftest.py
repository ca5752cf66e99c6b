"""Shared test configuration.

Hypothesis profiles are chosen by the DCFMT_HYPOTHESIS_PROFILE environment
variable, as python-zstandard does: ``default`` (fast, local), ``ci`` (more
examples), ``thorough`` (long runs).
"""

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=150, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("DCFMT_HYPOTHESIS_PROFILE", "default"))


@pytest.fixture
def many_batches(monkeypatch):
    """Spy on huffman.decode_many: the list of how many streams each call decoded."""
    from dcfmt import huffman

    batches: list[int] = []
    real = huffman.decode_many

    def spy(streams, *args):
        batches.append(len(streams))
        return real(streams, *args)

    monkeypatch.setattr(huffman, "decode_many", spy)
    return batches
