"""`python -m personae`: the command line. Ctrl-C while Python is still importing ends quietly too."""

import sys

try:
    from personae.cli.main import main
except KeyboardInterrupt:
    print("\ninterrupted", file=sys.stderr)
    raise SystemExit(130) from None

raise SystemExit(main())
