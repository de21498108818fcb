"""GraNet's regrowth on a short budget: the follow-up runs next to the accuracy study's GMP and GraNet runs.

.venv/bin/python -m experiments.granet_investigation.summarize
"""

from pathlib import Path

from experiments.common import parse_cli
from experiments.pdp_investigation.summarize import summarize

if __name__ == "__main__":
    parse_cli(__doc__)
    summarize(Path(__file__).parent, ("gmp", "granet"))
