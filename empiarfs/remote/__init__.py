"""Talking to the archive: routing between a site cache and the origin."""
