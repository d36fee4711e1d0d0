"""``empiarfs service``: the systemd unit that keeps a mount up."""

from __future__ import annotations
