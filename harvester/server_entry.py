"""The ``harvester`` command: the admin CLI, once the server's libraries are known to be there.

``pip install hpcaf`` brings the user clients only; the service needs the
``server`` extra. Without it, ``harvester`` says so in one line instead of a
traceback from deep inside an import.
"""

from __future__ import annotations

import importlib.util
import sys

SERVER_LIBRARIES = ("sqlalchemy", "alembic", "fastapi", "uvicorn", "pydantic_settings")


def _absent(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except ImportError:  # a finder that refuses it: as good as absent
        return True


def main() -> None:
    missing = [name for name in SERVER_LIBRARIES if _absent(name)]
    if missing:
        print(
            f"harvester: the service needs {', '.join(missing)}, which this installation "
            "lacks: pip install 'hpcaf[server]' (from a clone: pip install -e '.[server]')",
            file=sys.stderr,
        )
        sys.exit(2)
    from harvester.cli import main as cli_main

    cli_main()
