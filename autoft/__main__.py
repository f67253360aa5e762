"""`python -m autoft` runs the same command line as `autoft`."""

from autoft.cli import main

raise SystemExit(main())
