"""The memory estimate of a cascade training step, and the check that stops an oversized CPU run up front."""

import pytest
from conftest import tiny_cascade_trainer

from custom.core.errors import InputError
from custom.xray2ct.memory import MemoryCheck, available_bytes, estimate_step_bytes


def test_estimate_scales_with_batch_and_volume_and_matches_a_full_size_count():
    tr = tiny_cascade_trainer()
    params = sum(p.numel() * p.element_size() for p in tr.network.parameters())
    one = estimate_step_bytes(tr, tr.network, 32, 1, 16)
    two = estimate_step_bytes(tr, tr.network, 32, 2, 16)
    assert two - 5 * params == pytest.approx(2 * (one - 5 * params), rel=1e-6)
    assert estimate_step_bytes(tr, tr.network, 64, 1, 16) > 7 * (one - 5 * params)
    # extrapolated from 8^3 and 16^3 probes vs counted directly at 32^3
    from custom.xray2ct.memory import _saved_bytes

    counted = _saved_bytes(tr, tr.network, 32, 16) + 5 * params
    assert 0.8 * counted <= estimate_step_bytes(tr, tr.network, 32, 1, 16, probe_size=8) <= 1.25 * counted


def test_check_refuses_a_step_larger_than_the_machine_and_names_the_settings():
    tr = tiny_cascade_trainer()
    ok = MemoryCheck(volume_size=16, batch_size=1, xray_size=16)
    ok(tr)
    assert 0 < ok.estimate < available_bytes()
    with pytest.raises(InputError, match="lower batch_size, set gradient_checkpointing true"):
        MemoryCheck(volume_size=1024, batch_size=64, xray_size=16)(tr)
    MemoryCheck(volume_size=1024, batch_size=64, xray_size=16, enabled=False)(tr)  # memory_check false
