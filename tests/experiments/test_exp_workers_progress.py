"""Worker processes report each epoch they finish to the parent, whose second bar counts them:
a sweep (or the demo) is not silent until its first run ends."""

import queue
from types import SimpleNamespace

from smoothtopk.experiments import sweep, workers

FIXED = {"epochs": 2, "milestones": [], "subset": "200", "val_size": 100, "batch_size": 50,
         "progress": False}  # fmt: skip


class Bar:
    """A tqdm stand-in that records its total and updates."""

    made: list = []

    def __init__(self, total=None, desc=None, **_):
        self.total, self.desc, self.n = total, desc, 0
        Bar.made.append(self)

    def update(self, n=1):
        self.n += n

    def write(self, _):
        pass

    def close(self):
        pass


def test_the_parent_counts_every_epoch_its_workers_finish(tmp_path, monkeypatch):
    monkeypatch.setattr(workers, "tqdm", Bar)
    monkeypatch.setattr(Bar, "made", [])
    configs = sweep.expand(None, None, {"loss": ["ce", "smooth-svm"]}, FIXED)
    runs = [r.prepared for r in sweep.plan(str(tmp_path / "s"), configs)]
    done = workers.train_all(runs, jobs=2, progress=True, log=lambda _: None)
    assert len(done) == 2
    (epochs,) = [bar for bar in Bar.made if bar.desc == "epochs"]
    assert (epochs.total, epochs.n) == (4, 4)  # 2 runs x 2 epochs, every one reported


def test_only_epoch_lines_count(monkeypatch):
    reported = queue.Queue()
    monkeypatch.setattr(workers, "_EPOCHS", reported)
    for line in ["runs/x: small-cnn (49,396 parameters), CE", "resuming runs/x after epoch 1",
                 "epoch   1/2 lr 0.1 loss 4.5", "epoch   2/2 lr 0.1 loss 4.1"]:  # fmt: skip
        workers._report_epoch(line)
    assert workers._drain(reported) == 2 and workers._drain(reported) == 0


def test_a_resumed_run_has_only_its_remaining_epochs_to_count():
    fresh = SimpleNamespace(cfg=SimpleNamespace(epochs=5), resume_state=None)
    resumed = SimpleNamespace(cfg=SimpleNamespace(epochs=5), resume_state={"epoch": 2})
    assert workers.remaining_epochs(fresh) == 5 and workers.remaining_epochs(resumed) == 3
