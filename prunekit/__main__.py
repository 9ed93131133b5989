"""`python -m prunekit` (also under torchrun): the same CLI as the `prunekit` script."""

import os
import sys

# Under torchrun only rank 0 reports: the other ranks' progress bars are off (tqdm reads this at import).
if os.environ.get("RANK", "0") != "0":
    os.environ.setdefault("TQDM_DISABLE", "1")

from prunekit.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
