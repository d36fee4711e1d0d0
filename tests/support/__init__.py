"""Helpers shared by the tests (servers, Apache twin, mounts)."""
