"""`python -m ml_backend ...` is `lsllm ...` (the batch command line, `ml_backend.batch.cli`)."""

import sys

from ml_backend.batch.cli import main

sys.exit(main())
