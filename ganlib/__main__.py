"""`python -m ganlib ...`: the command line (see ganlib.cli)."""

from .cli import main

raise SystemExit(main())
