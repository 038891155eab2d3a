"""Real throwaway services for the tests, ``bench/``, ``soak/`` and ``make stack``.

Moved here from ``tests/support`` because the bench, the soak and ``make
stack`` import it as much as the tests do.
"""
