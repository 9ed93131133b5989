"""`python -m prunekit` (also under torchrun): the same CLI as the `prunekit` script."""
import sys

from prunekit.cli import main

if __name__ == "__main__":
    sys.exit(main())
