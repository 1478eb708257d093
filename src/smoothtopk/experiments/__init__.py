"""The experiment toolkit: data sets, label noise, models, training, reports and the CLI.

Run ``smoothtopk --help`` (or ``python -m smoothtopk --help``). Nothing here is imported by
``import smoothtopk``; the toolkit needs the ``experiments`` extra (torchvision, tqdm, matplotlib,
pyyaml).
"""
