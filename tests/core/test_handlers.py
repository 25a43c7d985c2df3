"""Handlers MONAI lacks, on real Ignite engines."""

import time

from ignite.engine import Engine, Events

from custom.core.handlers import TrainingTimeLimit


def run_engine(minutes: float) -> list:
    engine = Engine(lambda e, batch: time.sleep(0.01))
    TrainingTimeLimit(minutes).attach(engine)
    completed = []
    engine.add_event_handler(Events.COMPLETED, lambda e: completed.append(e.state.iteration))
    engine.run(range(20), max_epochs=5)
    return completed


def test_a_time_limit_ends_training_early_and_still_completes_the_run():
    done = run_engine(0.1 / 60)  # 0.1 s: about 10 of the 100 iterations
    assert len(done) == 1, "COMPLETED must fire once, so the final checkpoint is saved"
    assert 3 <= done[0] < 60


def test_no_time_limit_runs_every_epoch():
    assert run_engine(0) == [100]


def test_init_from_copies_every_tensor_that_fits_and_says_so(tmp_path, caplog):
    """MONAI's CheckpointLoader(strict_shape=False) loads nothing from such a file; this handler must load it."""
    import logging

    import pytest
    import torch

    from custom.core.errors import InputError
    from custom.core.handlers import InitFromWeights

    torch.manual_seed(0)
    source = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3), torch.nn.Conv3d(4, 1, 1))
    torch.save({"model": source.state_dict()}, tmp_path / "ckpt.pt")
    target = torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3), torch.nn.Conv3d(4, 3, 1))  # last layer: another shape
    kept = target[1].weight.detach().clone()
    with caplog.at_level(logging.INFO):
        InitFromWeights(target, str(tmp_path / "ckpt.pt"))()
    torch.testing.assert_close(target[0].weight, source[0].weight, rtol=0, atol=0)
    torch.testing.assert_close(target[1].weight, kept, rtol=0, atol=0)
    assert "2 tensors loaded, 2 kept their initialisation" in caplog.text
    torch.save({"other": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="no tensor of .* fits the network"):
        InitFromWeights(target, str(tmp_path / "other.pt"))()
    InitFromWeights(target, "")()  # no init_from: nothing happens
