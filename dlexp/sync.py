"""``python -m dlexp.sync RUN_FOLDER``: send the MLflow writes a tracking server missed (dlexp.tracking.sync)."""

import sys

from dlexp.tracking.sync import main

if __name__ == "__main__":
    sys.exit(main())
