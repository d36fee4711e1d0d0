"""Deploying a mount (issue 16): mount(8) and fstab through libfuse's
mount.fuse3 helper, -o options, the systemd unit (verified by
systemd-analyze, its commands run as systemd runs them), and a mount by an
ordinary user. Real mounts of the project's server on loopback."""

from __future__ import annotations

import configparser
import contextlib
import dataclasses
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

import pwd

import pytest
from click.testing import CliRunner
from support.mounting import requires_fuse, sha256_of

from empiarfs.cli import helper_form, main
from empiarfs.cli.service import escape_path, instance_name
from empiarfs.config import Settings
from empiarfs.errors import InvalidInput
from empiarfs.fuse.mount import parse_mount_options

EMPIARFS = os.path.join(os.path.dirname(sys.executable), "empiarfs")
# Where mount(8) finds the program: it runs helpers with this PATH.
DEFAULT_PATH_DIR = "/usr/local/bin"
SETTINGS = [f.name for f in dataclasses.fields(Settings)]
MOVIE = "EMPIAR-10002/data/100_movie_gc.mrcs"


def truth(manifest, path):
    entry, rel = path.split("/", 1)
    return next(f for f in manifest["files"] if f["entry"] == entry and f["path"] == rel)


def options_for(settings, cache_dir) -> str:
    return (f"api_url={settings.api_url},data_url={settings.data_url},ftp_url={settings.ftp_url},"
            f"cache_dir={cache_dir},cache_size=64M,connect_timeout=2,stall_timeout=2,retries=3")


def wait_for(condition, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def is_mounted(path) -> bool:
    with open("/proc/self/mountinfo") as handle:
        return any(line.split()[4] == str(path) for line in handle)


def force_unmount(path) -> None:
    if is_mounted(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True)


# -- pure logic ------------------------------------------------------------------


def test_mount_options_are_settings_flags_or_generic():
    settings, flags = parse_mount_options(
        ['ro,nodev,nosuid,dev,suid,allow_other,cache_size=200G,cache-dir=/var/cache/x',
         'api_url=http://h:1/empiar/api,x-systemd.automount,_netdev,nofail,nonempty,'
         'comment="a,b",offline,allowed_redirect_hosts="a.org,b.org"'], SETTINGS)
    assert settings == {"allow_other": "true", "cache_size": "200G",
                        "cache_dir": "/var/cache/x", "api_url": "http://h:1/empiar/api",
                        "offline": "true", "allowed_redirect_hosts": "a.org,b.org"}
    assert flags == {"nonempty": True}
    # Every setting, under its config-key name, becomes a Settings value.
    typed = Settings().replace(**settings)
    assert typed.cache_size == 200 * 1024**3 and typed.allow_other and typed.offline
    assert typed.allowed_redirect_hosts == ("a.org", "b.org")
    with pytest.raises(InvalidInput, match="unknown mount option 'cache_sise'"):
        parse_mount_options(["cache_sise=1G"], SETTINGS)
    with pytest.raises(InvalidInput, match="unbalanced quote"):
        parse_mount_options(['comment="a'], SETTINGS)


def test_the_mount_helper_calling_form(tmp_path):
    commands = main.commands
    mnt = str(tmp_path)
    # mount.fuse3 runs `TYPE SOURCE MOUNTPOINT -o OPTIONS` (no source when called bare).
    assert helper_form(["empiarfs", mnt, "-o", "ro,dev,suid"], commands) == \
        ["mount", mnt, "--source", "empiarfs", "-o", "ro,dev,suid"]
    assert helper_form([mnt, "-o", "ro"], commands) == ["mount", mnt, "-o", "ro"]
    for unchanged in (["mount", mnt], ["ls", "10002"], ["--version"], [],
                      ["moutn", mnt],                  # a typo is left for click to correct
                      ["empiarfs", str(tmp_path / "missing")]):
        assert helper_form(list(unchanged), commands) == unchanged
    typo = CliRunner().invoke(main, ["moutn", mnt])
    assert typo.exit_code == 2 and "Did you mean" in typo.output


def test_unit_instance_names_match_systemd_escape():
    for path in ("/mnt/empiar", "/data/cryo-em/empiar", "/x y/.hidden/ü", "/", "/a//b/"):
        expected = subprocess.run(["systemd-escape", "--path", path], capture_output=True,
                                  text=True, check=True).stdout.strip()
        assert escape_path(path) == expected, path
    assert instance_name("/mnt/empiar") == "empiarfs@mnt-empiar.service"
    with pytest.raises(InvalidInput, match="absolute"):
        escape_path("mnt/empiar")


# -- mount(8), fstab and -o nonempty --------------------------------------------------


@pytest.fixture
def on_default_path():
    """``empiarfs`` where mount(8) looks for it (it runs helpers with a
    fixed PATH): a link to this installation, removed afterwards unless it
    was there before (the administrator's step in the README)."""
    link = os.path.join(DEFAULT_PATH_DIR, "empiarfs")
    made = False
    if not os.path.lexists(link):
        os.symlink(EMPIARFS, link)
        made = True
    elif os.path.realpath(link) != os.path.realpath(EMPIARFS):
        pytest.fail(f"{link} is another installation of empiarfs; this test needs "
                    f"{EMPIARFS} there")
    yield link
    if made:
        os.unlink(link)


@requires_fuse
def test_mount_t_fuse_empiarfs_and_an_fstab_line(archive_server, settings_for, manifest,
                                                on_default_path, tmp_path):
    settings = settings_for(archive_server, tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    opts = options_for(settings, tmp_path / "cache")
    try:
        done = subprocess.run(["mount", "-t", "fuse.empiarfs", "empiarfs", str(mnt),
                               "-o", f"ro,allow_other,{opts}"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert is_mounted(mnt)
        assert sha256_of(mnt / MOVIE) == truth(manifest, MOVIE)["sha256"]
        line = next(line for line in open("/proc/self/mounts") if f" {mnt} " in line)
        assert line.split()[2] == "fuse.empiarfs" and "ro," in line and "allow_other" in line
        assert subprocess.run(["umount", str(mnt)], timeout=30).returncode == 0
        wait_for(lambda: not is_mounted(mnt), what="unmount")

        # The same as an fstab line, with the options fstab lines carry.
        fstab = tmp_path / "fstab"
        fstab.write_text(f"# empiarfs\nempiarfs  {mnt}  fuse.empiarfs  "
                         f"ro,nofail,_netdev,x-systemd.automount,{opts}  0  0\n")
        done = subprocess.run(["mount", "--fstab", str(fstab), str(mnt)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert {"10002.xml", "data", "entry.json", "imagesets"} <= set(
            os.listdir(mnt / "EMPIAR-10002"))
        assert subprocess.run(["umount", str(mnt)], timeout=30).returncode == 0
        wait_for(lambda: not is_mounted(mnt), what="unmount")

        # Over a non-empty directory: refused in one line, unless -o nonempty.
        (mnt / "kept.txt").write_text("mine\n")
        refused = subprocess.run(["mount", "-t", "fuse.empiarfs", "empiarfs", str(mnt),
                                  "-o", opts], capture_output=True, text=True, timeout=60)
        assert refused.returncode != 0 and not is_mounted(mnt)
        assert refused.stderr.strip().splitlines() == [
            f"empiarfs: error: mount point {mnt} is not empty (1 entry would be hidden while "
            "mounted); use an empty directory, or --nonempty (-o nonempty) to mount over them"]
        done = subprocess.run(["mount", "-t", "fuse.empiarfs", "empiarfs", str(mnt),
                               "-o", f"{opts},nonempty"], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        assert "EMPIAR-10002" in os.listdir(mnt) and "kept.txt" not in os.listdir(mnt)
        assert subprocess.run(["umount", str(mnt)], timeout=30).returncode == 0
        wait_for(lambda: not is_mounted(mnt), what="unmount")
        assert os.listdir(mnt) == ["kept.txt"]
    finally:
        force_unmount(mnt)


# -- systemd ---------------------------------------------------------------------------


def unit_commands(text: str, mountpoint: str) -> dict:
    """``{ExecStartPre: [(may_fail, argv)], ...}`` and ``Environment`` of a
    unit, with %f filled in as systemd does for this mount point's instance."""
    parser = configparser.ConfigParser(strict=False, interpolation=None,
                                       dict_type=_MultiDict)
    parser.optionxform = str
    parser.read_string(text)
    out: dict = {"Environment": {}}
    for key, values in parser["Service"].items():
        for value in values.split("\n"):
            if key == "Environment":
                name, _, val = value.partition("=")
                out["Environment"][name] = val
            elif key.startswith("Exec"):
                may_fail = value.startswith("-")
                argv = [mountpoint if a == "%f" else a for a in shlex.split(value.lstrip("-"))]
                out.setdefault(key, []).append((may_fail, argv))
    return out


class _MultiDict(dict):
    """Repeated keys (two ExecStartPre=) kept, one value per line."""

    def __setitem__(self, key, value):
        if key in self and isinstance(value, list) and isinstance(self[key], list):
            self[key].extend(value)
        else:
            super().__setitem__(key, value)


@requires_fuse
def test_systemd_unit_verifies_and_its_commands_start_stop_and_recover(
        archive_server, settings_for, manifest, tmp_path):
    units = tmp_path / "units"
    installed = CliRunner().invoke(main, ["service", "install", "/mnt/empiar", "--unit-dir",
                                          str(units)], catch_exceptions=False)
    assert installed.exit_code == 0, installed.output
    assert "systemctl enable --now empiarfs@mnt-empiar.service" in installed.output
    text = (units / "empiarfs@.service").read_text()
    assert "@EMPIARFS@" not in text and f"ExecStart={EMPIARFS} mount --foreground" in text
    instance = units / "empiarfs@mnt-empiar.service"
    shutil.copy(units / "empiarfs@.service", instance)
    verify = subprocess.run(["systemd-analyze", "verify", str(instance)], capture_output=True,
                            text=True, timeout=120)
    assert verify.returncode == 0 and not (verify.stdout + verify.stderr).strip(), \
        verify.stdout + verify.stderr
    for key in ("Restart=on-failure", "ExecStop=", "ExecStopPost=", "ExecStartPre=-",
                "WantedBy=multi-user.target"):
        assert key in text, key

    # Run its commands as systemd would, for a mount point of this test;
    # settings come from the config file the unit names (here a test one).
    settings = settings_for(archive_server, tmp_path)
    mnt = str(tmp_path / "svc" / "mnt")
    unit = unit_commands(text, mnt)
    config = tmp_path / "config.ini"
    config.write_text("[empiarfs]\n" + "\n".join(
        f"{k} = {getattr(settings, k)}" for k in ("api_url", "data_url", "ftp_url",
                                                   "connect_timeout", "stall_timeout")) + "\n")
    assert unit["Environment"]["EMPIARFS_CONFIG"] == "/etc/empiarfs/config.ini"
    env = {**os.environ, **unit["Environment"], "EMPIARFS_CONFIG": str(config),
           "EMPIARFS_CACHE_DIR": str(tmp_path / "svc-cache")}
    log = open(tmp_path / "daemon.log", "ab")

    def run_all(key):
        for may_fail, argv in unit.get(key, []):
            done = subprocess.run(argv, env=env, capture_output=True, timeout=60)
            assert may_fail or done.returncode == 0, (argv, done.stderr)

    def start():
        run_all("ExecStartPre")
        (_, argv), = unit["ExecStart"]
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
        wait_for(lambda: is_mounted(mnt) or proc.poll() is not None, what="the mount")
        assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
        return proc

    try:
        proc = start()
        assert sha256_of(os.path.join(mnt, MOVIE)) == truth(manifest, MOVIE)["sha256"]
        # A clean stop: ExecStop unmounts and the daemon exits 0 by itself.
        run_all("ExecStop")
        assert proc.wait(timeout=15) == 0 and not is_mounted(mnt)
        run_all("ExecStopPost")
        daemon_log = (tmp_path / "daemon.log").read_text()
        assert "Traceback" not in daemon_log and "WARNING" not in daemon_log, daemon_log

        # A crash leaves a dead mount; a start without ExecStartPre fails
        # with one clear line, the unit's ExecStartPre clears it.
        proc = start()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=15)
        assert is_mounted(mnt)
        again = subprocess.run(unit["ExecStart"][0][1], env=env, capture_output=True,
                               text=True, timeout=60)
        assert again.returncode == 1
        assert again.stderr.strip() == (f"empiarfs: error: {mnt} is a dead FUSE mount (its "
                                         f"daemon ended); detach it with: fusermount3 -u -z "
                                         f"{mnt}")
        proc = start()   # what Restart=on-failure does
        assert sha256_of(os.path.join(mnt, MOVIE)) == truth(manifest, MOVIE)["sha256"]
        # SIGTERM (systemd's kill when a busy mount refuses ExecStop): exit 0, unmounted.
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        run_all("ExecStopPost")
        assert not is_mounted(mnt)
    finally:
        log.close()
        force_unmount(mnt)


# -- an ordinary user --------------------------------------------------------------------

USER = "nobody"


@contextlib.contextmanager
def _mode_added(path, bits):
    """``path`` with mode ``bits`` added for the test, as it was afterwards."""
    before = stat.S_IMODE(os.stat(path).st_mode)
    if before & bits == bits:
        yield
        return
    os.chmod(path, before | bits)
    try:
        yield
    finally:
        os.chmod(path, before)


@pytest.fixture
def ordinary_user(tmp_path):
    """``(run_as, home)``: commands run as ``nobody`` with what an
    administrator grants an ordinary user: /dev/fuse usable (0666, Debian's
    default), and (on machines whose Python lives under a private home, as
    pyenv under /root) the right to reach the interpreter. Modes are put
    back afterwards."""
    user = pwd.getpwnam(USER)
    home = tempfile.mkdtemp(prefix="empiarfs-user-")
    os.chown(home, user.pw_uid, user.pw_gid)
    blocked = []
    for top in {os.path.realpath(sys.executable), os.path.realpath(sys.prefix),
                os.path.realpath(sys.base_prefix), os.path.dirname(os.path.abspath(__file__))}:
        parent = top
        while parent != "/":
            parent = os.path.dirname(parent)
            if not os.stat(parent).st_mode & stat.S_IXOTH and parent not in blocked:
                blocked.append(parent)
    with contextlib.ExitStack() as grants:
        grants.enter_context(_mode_added("/dev/fuse", 0o006))
        for directory in blocked:
            grants.enter_context(_mode_added(directory, 0o001))

        def run_as(*args, env=None, timeout=60):
            env_args = [f"{k}={v}" for k, v in (env or {}).items()]
            return subprocess.run(["runuser", "-u", USER, "--", "env", f"HOME={home}",
                                   *env_args, *args], capture_output=True, text=True,
                                  timeout=timeout, cwd=home)
        yield run_as, home
        shutil.rmtree(home, ignore_errors=True)


@contextlib.contextmanager
def _fuse_conf(user_allow_other: bool):
    path = "/etc/fuse.conf"
    before = open(path).read() if os.path.exists(path) else None
    lines = [line for line in (before or "").splitlines() if line.strip() != "user_allow_other"]
    with open(path, "w") as handle:
        handle.write("\n".join(lines + (["user_allow_other"] if user_allow_other else [])) + "\n")
    try:
        yield
    finally:
        if before is None:
            os.unlink(path)
        else:
            with open(path, "w") as handle:
                handle.write(before)


@requires_fuse
def test_an_ordinary_user_mounts_with_fusermount3(archive_server, settings_for, manifest,
                                                 ordinary_user):
    run_as, home = ordinary_user
    settings = settings_for(archive_server, home)
    env = {"EMPIARFS_API_URL": settings.api_url, "EMPIARFS_DATA_URL": settings.data_url,
           "EMPIARFS_FTP_URL": settings.ftp_url, "EMPIARFS_CACHE_DIR": f"{home}/cache",
           "EMPIARFS_CONFIG": "/nonexistent.ini"}
    mnt = os.path.join(home, "mnt")
    assert run_as("mkdir", mnt).returncode == 0
    read = [sys.executable, "-c", "import hashlib,sys; "
            "print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest())",
            os.path.join(mnt, MOVIE)]
    try:
        done = run_as(EMPIARFS, "mount", mnt, env=env)
        assert done.returncode == 0, done.stderr
        line = next(line for line in open("/proc/self/mounts") if f" {mnt} " in line)
        assert f"user_id={pwd.getpwnam(USER).pw_uid}," in line
        got = run_as(*read)
        assert got.stdout.strip() == truth(manifest, MOVIE)["sha256"], got.stderr
        # Without allow_other the mount is the user's alone; root included.
        with pytest.raises(PermissionError):
            os.listdir(mnt)
        assert run_as(EMPIARFS, "umount", mnt).returncode == 0
        wait_for(lambda: not is_mounted(mnt), what="unmount")

        # allow_other needs the administrator's user_allow_other.
        with _fuse_conf(user_allow_other=False):
            refused = run_as(EMPIARFS, "mount", mnt, "-o", "allow_other", env=env)
        assert refused.returncode == 1 and not is_mounted(mnt)
        assert refused.stderr.strip().splitlines() == [
            "empiarfs: error: allow_other needs 'user_allow_other' in /etc/fuse.conf for "
            "ordinary users: an administrator must add that line (or mount without it)"]
        with _fuse_conf(user_allow_other=True):
            done = run_as(EMPIARFS, "mount", mnt, "-o", "allow_other", env=env)
            assert done.returncode == 0, done.stderr
        assert sha256_of(os.path.join(mnt, MOVIE)) == truth(manifest, MOVIE)["sha256"]
        assert run_as(EMPIARFS, "umount", mnt).returncode == 0
        wait_for(lambda: not is_mounted(mnt), what="unmount")
    finally:
        force_unmount(mnt)


def test_an_ordinary_user_is_told_what_to_ask_for(tmp_path):
    from empiarfs.fuse.mount import MountError, check_user_mount

    device = tmp_path / "fuse"
    device.write_text("")
    conf = tmp_path / "fuse.conf"
    conf.write_text("#user_allow_other\n")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # Root needs nothing.
    check_user_mount(str(mnt), True, uid=0, fuse_conf=str(conf), device="/nonexistent")
    # The test runs as root, whom no mode stops: the message for a device
    # the user cannot open is checked with a device that is not there.
    with pytest.raises(MountError, match="an administrator must make it usable"):
        check_user_mount(str(mnt), False, uid=1000, fuse_conf=str(conf),
                         device=str(tmp_path / "no-device"))
    with pytest.raises(MountError, match="user_allow_other"):
        check_user_mount(str(mnt), True, uid=1000, fuse_conf=str(conf), device=str(device))
    conf.write_text("user_allow_other\n")
    check_user_mount(str(mnt), True, uid=1000, fuse_conf=str(conf), device=str(device))
