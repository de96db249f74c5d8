"""``python -m wholeip`` is the ``wholeip`` command."""

from wholeip.cli.main import entry

raise SystemExit(entry())
