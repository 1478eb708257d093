"""``python -m smoothtopk``: the experiment command line (see ``smoothtopk --help``)."""

import sys

from smoothtopk.experiments.cli import main

if __name__ == "__main__":
    sys.exit(main())
