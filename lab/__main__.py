"""`python -m lab`: the same as `python -m lab.lab`."""

import sys

from lab.lab import main

sys.exit(main())
