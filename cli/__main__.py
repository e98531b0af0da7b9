"""`python -m cli ...` == `duplex ...` (what torchrun launches: `torchrun ... -m cli train lm ...`)."""

import sys

from cli.main import main

sys.exit(main())
