"""The ``wholeip`` command leaves out what structlog would import only because it is
installed (rich: 8 MiB in every agent). Each check runs in a fresh interpreter: what a
process can import is decided once, and pytest's own process must keep its own."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def _run(code: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, check=True
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def test_the_agent_loads_no_console_traceback_package() -> None:
    result = _run(
        """
        import json, sys
        from wholeip.cli import main
        main.leave_out_unused()  # what entry() does first
        import wholeip.agent.app  # the agent, as `wholeip run` imports it
        from wholeip.agent import log
        log.configure(format="console")
        import structlog.dev, structlog.tracebacks
        loaded = sorted(m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in
                        ("rich", "pygments", "better_exceptions"))
        print(json.dumps({"loaded": loaded, "dev": structlog.dev.rich is None,
                          "tracebacks": structlog.tracebacks.rich is None}))
        """
    )
    assert result == {"loaded": [], "dev": True, "tracebacks": True}


def test_a_package_imported_before_is_left_alone() -> None:
    result = _run(
        """
        import json, sys, types
        sys.modules["rich"] = marker = types.ModuleType("rich")  # (whether or not it is installed)
        from wholeip.cli import main
        main.leave_out_unused()
        print(json.dumps({"kept": sys.modules["rich"] is marker,
                          "left_out": sys.modules["better_exceptions"] is None}))
        """
    )
    assert result == {"kept": True, "left_out": True}


def test_main_alone_changes_nothing() -> None:
    """``main`` runs inside tests too: only ``entry`` (the command's own process) leaves
    packages out."""
    result = _run(
        """
        import json, sys
        from wholeip.cli import main
        try:
            main.main(["--help"])
        except SystemExit:
            pass
        print(json.dumps({"untouched": all(n not in sys.modules for n in main.UNUSED)}))
        """
    )
    assert result == {"untouched": True}
