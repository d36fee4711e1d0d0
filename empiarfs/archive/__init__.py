"""EMPIAR itself: REST metadata, directory listings, exact sizes, code tables."""
