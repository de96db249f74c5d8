"""``python -m wholeip`` is the ``wholeip`` command."""

from wholeip.cli import main

raise SystemExit(main())
