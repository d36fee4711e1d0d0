"""Tools around the filesystem: site cache configuration and the like."""
