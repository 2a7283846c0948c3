"""Command-line tools (``python -m fastxent bench|bench-linear|demo``).

They are built on the public API and are never imported by the library itself.
"""
