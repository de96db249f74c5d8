"""``python -m wholeip`` is the ``wholeip`` command."""

from wholeip.cli.main import main

raise SystemExit(main())
