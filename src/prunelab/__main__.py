"""``python -m prunelab``: the same command line as ``prunelab``."""

from prunelab.cli import main

raise SystemExit(main())
