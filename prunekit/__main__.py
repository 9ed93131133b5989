"""`python -m prunekit` (also under torchrun): the same CLI as the `prunekit` script."""

import sys

from prunekit.env import quiet_other_ranks

quiet_other_ranks()  # before anything imports tqdm

from prunekit.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
