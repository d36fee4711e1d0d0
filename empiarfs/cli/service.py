"""``empiarfs service install|show``: the systemd unit that keeps a mount up.

The unit is a template shipped with the package
(``empiarfs/fuse/systemd/empiarfs@.service``); its instance is the mount
point, escaped as systemd escapes paths, so one file serves any number of
mounts: ``empiarfs@mnt-empiar.service`` mounts ``/mnt/empiar``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import resources

import click

from empiarfs.cli import main
from empiarfs.errors import EmpiarfsError, InvalidInput

UNIT_NAME = "empiarfs@.service"
SYSTEM_UNIT_DIR = "/etc/systemd/system"
_PLAIN = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.")


def escape_path(path: str) -> str:
    """A path as a unit instance name, as ``systemd-escape --path`` writes
    it: ``/mnt/empiar`` -> ``mnt-empiar``, ``/data/a-b`` -> ``data-a\\x2db``.

    Raises
    ------
    InvalidInput
        If ``path`` is not absolute.
    """
    if not path.startswith("/"):
        raise InvalidInput(f"mount point {path} must be an absolute path")
    parts = [p for p in os.path.normpath(path).split("/") if p]
    if not parts:
        return "-"
    escaped = []
    for index, char in enumerate("/".join(parts)):
        if char == "/":
            escaped.append("-")
        elif char in _PLAIN and not (index == 0 and char == "."):
            escaped.append(char)
        else:
            escaped.extend(f"\\x{byte:02x}" for byte in char.encode("utf-8"))
    return "".join(escaped)


def program_path() -> str:
    """The absolute path of the running ``empiarfs`` program."""
    here = os.path.join(os.path.dirname(sys.executable), "empiarfs")
    if os.access(here, os.X_OK):
        return here
    found = shutil.which("empiarfs")
    if found:
        return os.path.abspath(found)
    raise InvalidInput("cannot find the empiarfs program next to this Python "
                       f"({sys.executable}) or on PATH")


def render_unit(program: str | None = None) -> str:
    """The unit template with this installation's paths filled in.

    Raises
    ------
    InvalidInput
        If fusermount3 (package fuse3) is not installed.
    """
    fusermount = shutil.which("fusermount3")
    if not fusermount:
        raise InvalidInput("fusermount3 is missing; install fuse3 (apt-get install fuse3)")
    text = resources.files("empiarfs.fuse").joinpath("systemd", UNIT_NAME).read_text("utf-8")
    return (text.replace("@EMPIARFS@", program or program_path())
                .replace("@FUSERMOUNT3@", fusermount)
                .replace("@MKDIR@", shutil.which("mkdir") or "/bin/mkdir"))


def instance_name(mountpoint: str) -> str:
    """``empiarfs@mnt-empiar.service`` for ``/mnt/empiar``."""
    return UNIT_NAME.replace("@.", f"@{escape_path(mountpoint)}.")


@main.group()
def service():
    """A systemd service that keeps a mount up (restarted on failure,
    stopped cleanly).

    \b
    Examples:
      sudo empiarfs service install /mnt/empiar --now
      systemctl status empiarfs@mnt-empiar.service
      empiarfs service show /mnt/empiar
    """


@service.command("install")
@click.argument("mountpoint")
@click.option("--now", "start_now", is_flag=True,
              help="Also enable the service and start it (systemctl enable --now).")
@click.option("--unit-dir", default=SYSTEM_UNIT_DIR, show_default=True,
              type=click.Path(file_okay=False), help="Where to write the unit.")
def service_install(mountpoint, start_now, unit_dir):
    """Install the unit for a mount at MOUNTPOINT (an absolute path).

    Writes UNIT_DIR/empiarfs@.service with this installation's paths, then
    reloads systemd and, with --now, enables and starts
    empiarfs@<MOUNTPOINT escaped>.service. Settings come from
    /etc/empiarfs/config.ini (section [empiarfs]); the cache is
    /var/cache/empiarfs; other users may read the mount (allow_other).

    \b
    Example:
      sudo empiarfs service install /mnt/empiar --now
    """
    instance = instance_name(mountpoint)
    text = render_unit()
    os.makedirs(unit_dir, exist_ok=True)
    path = os.path.join(unit_dir, UNIT_NAME)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    click.echo(f"empiarfs: wrote {path}")
    systemd_running = os.path.isdir("/run/systemd/system") and shutil.which("systemctl")
    if os.path.abspath(unit_dir) == SYSTEM_UNIT_DIR and systemd_running:
        _systemctl("daemon-reload")
        if start_now:
            _systemctl("enable", "--now", instance)
            click.echo(f"empiarfs: {instance} enabled and started; "
                       f"status: systemctl status {instance}")
            return
    elif start_now:
        raise InvalidInput(f"--now needs systemd running and the unit in {SYSTEM_UNIT_DIR}")
    click.echo(f"empiarfs: start it with: systemctl enable --now {instance}")


@service.command("show")
@click.argument("mountpoint")
def service_show(mountpoint):
    """Print the unit as `install` would write it, and its instance name."""
    click.echo(render_unit(), nl=False)
    click.echo(f"# instance for {mountpoint}: {instance_name(mountpoint)}")


def _systemctl(*args) -> None:
    result = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        reason = " ".join((result.stderr or result.stdout).split())
        raise EmpiarfsError(f"systemctl {' '.join(args)} failed: {reason}")
