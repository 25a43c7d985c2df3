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
