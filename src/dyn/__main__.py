"""``python -m dyn`` is the ``dyn`` command."""

from dyn.cli.app import main

main()
