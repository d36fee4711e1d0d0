"""Layer 4, the kernel's side: ``operations`` (thin FUSE callbacks with one
errno map) and ``mount`` (choosing libfuse 3, daemonising, mounting and
unmounting). Nothing below imports this package, and ``import empiarfs``
never loads libfuse.
"""
