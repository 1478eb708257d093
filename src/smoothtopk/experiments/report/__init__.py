"""``smoothtopk report``: a markdown table, a CSV and PNG plots from finished runs.

Everything is read from the run directories (:mod:`..records`: ``config.yaml``,
``metrics.jsonl``, ``noise.json``, ``env.json``); the reported epoch of each run is its best
(:func:`.selection.select_best`: the best validation top-5, ties to the earliest), and the
table shows its *test* top-1/top-5. Runs with the same data set, loss and noise level (or subset
size) but different seeds are averaged (column ``n``): the tables give mean ± sample standard
deviation over seeds, the accuracy plot error bars of one standard deviation. Long-tailed runs
(:attr:`..config.Config.long_tailed`) count as their own data set (``embedded LT10``), and a
second table (``long_tail.md``) shows micro and macro top-1/top-5 and the macro top-5 of the
head, medium and tail thirds of the classes.

The rooms, from the bottom up (imports run downward: ``test_exp_architecture.py``):

* :mod:`.selection`: the best-epoch rule (also training's), the per-loss selection of a grid
  on clean validation, the options a grid may select; imports no other room of the report;
* :mod:`.load`: the runs of the paths given, read through :mod:`..records`;
* :mod:`.aggregate`: the report's axis and rows (mean ± std over seeds, paired differences);
* :mod:`.tables`, :mod:`.plots`: the rows as markdown, CSV and PNG;
* :mod:`.write`: the report directory (:func:`.write.write_report`).

This file imports nothing, so that training can use :mod:`.selection` without the rest.
"""
