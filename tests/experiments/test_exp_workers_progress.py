"""Worker processes report each training step and each epoch they finish to the parent, whose
second bar counts the steps (the epochs in its postfix): a sweep (or the demo) moves within
seconds, during the first epoch of its first runs, instead of being silent until an epoch
ends."""

import queue
from types import SimpleNamespace

from smoothtopk.experiments import sweep, workers

FIXED = {"epochs": 2, "milestones": [], "subset": "200", "val_size": 100, "batch_size": 50,
         "progress": False}  # fmt: skip


class Bar:
    """A tqdm stand-in that records its total, its updates and its postfix at each update."""

    made: list = []

    def __init__(self, total=None, desc=None, postfix="", **_):
        self.total, self.desc, self.n, self.postfix = total, desc, 0, postfix
        self.seen: list = []  #: (n, postfix) after each update that moved the bar
        Bar.made.append(self)

    def update(self, n=1):
        self.n += n
        if n:
            self.seen.append((self.n, self.postfix))

    def set_postfix_str(self, text, refresh=True):
        self.postfix = text

    def write(self, _):
        pass

    def close(self):
        pass


def test_the_parent_counts_every_step_its_workers_take_before_their_epochs_end(
    tmp_path, monkeypatch
):
    """Through the real worker path (spawned processes, the queue, the parent's bar): the bar
    moves by steps during the first epoch, before any epoch is reported, and counts every step
    and every epoch of the runs."""
    monkeypatch.setattr(workers, "tqdm", Bar)
    monkeypatch.setattr(Bar, "made", [])
    configs = sweep.expand(None, None, {"loss": ["ce", "smooth-svm"]}, FIXED)
    runs = [r.prepared for r in sweep.plan(str(tmp_path / "s"), configs)]
    done = workers.train_all(runs, jobs=2, progress=True, log=lambda _: None)
    assert len(done) == 2
    (steps,) = [bar for bar in Bar.made if bar.desc == "steps"]
    per_epoch = 4  # 200 training images in batches of 50
    assert (steps.total, steps.n) == (2 * 2 * per_epoch, 16)  # 2 runs x 2 epochs x 4 steps
    assert steps.postfix == "epochs 4/4"  # every epoch reported
    before = [n for n, postfix in steps.seen if postfix == "epochs 0/4"]
    assert before and before[-1] >= per_epoch  # the first epoch's steps, before its end


def test_a_worker_reports_each_step_then_its_epoch(tmp_path, monkeypatch):
    """A worker's run (:func:`workers._run_one`, here in this process) puts one step message
    per training step on the parent's queue as it goes, then the epoch's; other log lines are
    dropped."""
    reported = queue.Queue()
    monkeypatch.setattr(workers, "_PROGRESS", reported)
    (cfg,) = sweep.expand(None, None, {"loss": ["ce"]}, {**FIXED, "epochs": 1})
    workers._run_one(cfg.to_dict(), str(tmp_path / "run"), False, False, threads=1)
    assert workers._drain(reported) == [workers.STEP] * 4 + [workers.EPOCH]
    for line in ["runs/x: small-cnn (49,396 parameters), CE", "resuming runs/x after epoch 1",
                 "epoch   1/2 lr 0.1 loss 4.5"]:  # fmt: skip
        workers._report_epoch(line)
    assert workers._drain(reported) == [workers.EPOCH] and workers._drain(reported) == []


def test_a_resumed_run_has_only_its_remaining_epochs_and_steps_to_count():
    data = SimpleNamespace(train=range(130))  # batches of 50: 3 steps per epoch
    cfg = SimpleNamespace(epochs=5, batch_size=50)
    fresh = SimpleNamespace(cfg=cfg, data=data, resume_state=None)
    resumed = SimpleNamespace(cfg=cfg, data=data, resume_state={"epoch": 2, "step": 0})
    mid_epoch = SimpleNamespace(cfg=cfg, data=data, resume_state={"epoch": 2, "step": 1})
    assert workers.remaining_epochs(fresh) == 5 and workers.remaining_epochs(resumed) == 3
    assert [workers.remaining_steps(r) for r in (fresh, resumed, mid_epoch)] == [15, 9, 8]
