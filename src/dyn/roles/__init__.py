"""The built-in roles. Graphs name them by a short ``uses:`` name, which is an entry point
in the ``dyn.roles`` group (declared in dyn's ``pyproject.toml``); a graph may also name
any component class by import path (``uses: pkg.mod:Class``).
"""
