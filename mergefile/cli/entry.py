"""The ``mergebuild`` console script: answer a repeated up-to-date command from its alias
(``cli/noop.py``), else hand the command to a build server if one is running for this code and
environment (``mergefile/server``, docs/server.md), else run it here.

Kept to the standard library and ``mergefile.server``'s small modules: with a server, this
process does nothing but pass its descriptors, wait and exit with the build's status.
``python -m mergefile.cli.main`` always runs in its own process.
"""

from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    if not argv or argv[0] != "server":  # the server verb itself always runs here
        from mergefile.cli.noop import answer_alias

        code = answer_alias(argv)  # a repeated command that is up to date: answered here
        if code is None:
            from mergefile.server.client import run

            code = run(argv)
        if code is not None:
            sys.exit(code)
    from mergefile.cli.main import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
