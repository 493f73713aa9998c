"""Moved to `ml_backend.encoders` (serving needs the encoder too, and `ml_backend` never imports
`training`). Kept so that `python -m training.encoders prepare` and old imports keep working."""

import sys

from ml_backend.encoders import *  # noqa: F401,F403
from ml_backend.encoders import main

if __name__ == "__main__":
    sys.exit(main())
