"""The soak run behind ``scripts/soak``: load with faults, then hostile
inputs, then docs/reliability.md from the figures of that same run.

It reuses the test harness (``tests/support``: mounts, the fault proxy,
checked reads), put on the path by ``scripts/soak``.
"""
