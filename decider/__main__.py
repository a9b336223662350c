"""`python -m decider …` is the `decider` command."""

import sys

from decider.cli.main import main

sys.exit(main())
