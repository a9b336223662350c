"""`python -m decider …` is the `decider` command."""

import sys

from .cli.main import main

sys.exit(main())
