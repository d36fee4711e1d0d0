"""The ``empiarfs`` command. The only place that configures logging.

Each command group lives in its own module under ``empiarfs.cli`` and
attaches itself to :data:`main`; this module imports them all.
"""

from __future__ import annotations

import difflib
import logging
import os
import sys

import click

from empiarfs import __version__
from empiarfs.config import Settings
from empiarfs.errors import EmpiarfsError, InvalidInput

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class _Group(click.Group):
    """Turns empiarfs errors, and the operating system's (a full disk, a
    directory that cannot be written), into one clear line and exit code 1,
    and a misused command into one line and exit code 2. Anything else is
    a bug and keeps its traceback.

    Also accepts the mount helper's calling form (see :func:`helper_form`).
    """

    def main(self, args=None, prog_name=None, **extra):
        if args is None:
            args = sys.argv[1:]
        return super().main(helper_form(list(args), self.commands), prog_name, **extra)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EmpiarfsError as exc:
            click.echo(f"empiarfs: error: {one_line(exc)}", err=True)
            ctx.exit(EXIT_ERROR)
        except BrokenPipeError:
            # The reader of the output went away (`empiarfs stats | head`):
            # stop quietly, as shell tools do; stdout goes nowhere from here
            # so that the interpreter's own flush at exit does not complain.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            ctx.exit(EXIT_OK)
        except OSError as exc:
            logging.getLogger(__name__).debug("command failed", exc_info=True)
            click.echo(f"empiarfs: error: {os_error_text(exc)}", err=True)
            ctx.exit(EXIT_ERROR)
        except click.exceptions.NoArgsIsHelpError:
            raise   # a group without its command: click shows the group's help
        except click.UsageError as exc:
            path = (exc.ctx or ctx).command_path.split()[1:]
            where = " ".join(["empiarfs", *path])
            click.echo(f"empiarfs: error: {one_line(exc.format_message())} "
                       f"(see: {where} --help)", err=True)
            ctx.exit(EXIT_USAGE)


def helper_form(args: list, commands) -> list:
    """The command line of ``mount.fuse3`` (``mount -t fuse.empiarfs``, an
    fstab line) as an ``empiarfs mount`` command line.

    libfuse's helper runs the program named by the type as ``empiarfs
    SOURCE MOUNTPOINT -o OPTIONS`` (``empiarfs MOUNTPOINT -o OPTIONS``
    when called without a source): a first word that is no command,
    followed by a directory or being one, is that form. A near miss of a
    command name (``moutn``) is left for click to correct.
    """
    if not args or args[0] in commands or args[0].startswith("-"):
        return args
    if difflib.get_close_matches(args[0], list(commands), n=1, cutoff=0.75):
        return args
    if len(args) >= 2 and not args[1].startswith("-") and os.path.isdir(args[1]):
        return ["mount", args[1], "--source", args[0], *args[2:]]
    if os.path.isdir(args[0]) and (len(args) == 1 or args[1].startswith("-")):
        return ["mount", args[0], *args[1:]]
    return args


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 file``, ``2 files``, ``1 entry``, ``3 entries``."""
    if count == 1:
        return f"{count} {word}"
    if many is None:
        many = word[:-1] + "ies" if word.endswith("y") and word[-2:-1] not in "aeiou" \
            else word + "s"
    return f"{count} {many}"


def cache_dir_option(func):
    """``--cache-dir``, for every command that reads or writes the cache."""
    return click.option("--cache-dir", default=None, type=click.Path(file_okay=False),
                        help="Cache directory (default ~/.cache/empiarfs). "
                             "Env: EMPIARFS_CACHE_DIR.")(func)


def selector_from(globs=(), regexes=()):
    """The selector of repeated ``--glob`` and ``--regex`` options: a file
    is chosen when any one of the patterns matches it.

    Raises
    ------
    InvalidInput
        If a pattern is malformed.
    """
    from empiarfs.namespace.select import Selector

    parts = [Selector.glob(g) for g in globs or ()] + [Selector.regex(r) for r in regexes or ()]
    if not parts:
        return Selector.everything()
    return parts[0] if len(parts) == 1 else AnyOf(tuple(parts))


class AnyOf:
    """Several selectors as one (what :func:`empiarfs.namespace.select.walk` needs)."""

    def __init__(self, parts: tuple):
        self.parts = parts
        self.description = " or ".join(p.description for p in parts)

    def matches(self, relpath: str) -> bool:
        return any(p.matches(relpath) for p in self.parts)

    def may_contain(self, dirpath: str) -> bool:
        return any(p.may_contain(dirpath) for p in self.parts)


def one_line(exc: BaseException) -> str:
    """An error's message on one line (a message may quote a multi-line reply)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def os_error_text(exc: OSError) -> str:
    """``/x/y: Permission denied`` rather than ``[Errno 13] Permission denied: '/x/y'``."""
    if exc.strerror and exc.filename is not None:
        where = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else exc.filename
        return f"{where}: {exc.strerror}"
    return one_line(exc)


def _remember_site_cache(ctx, _param, value):
    # Kept beside the other options' values without becoming a parameter
    # of every command: settings_from() picks it up.
    if value is not None:
        ctx.ensure_object(dict)["site_cache"] = value
    return value


def archive_options(func):
    """--api-url/--data-url/--ftp-url/--site-cache, shared by every command
    that talks to the archive. Values also come from EMPIARFS_API_URL etc."""
    func = click.option("--site-cache", default=None, metavar="URL", expose_value=False,
                        callback=_remember_site_cache,
                        help="Site cache (http://HOST:PORT) to send archive requests to; "
                             "the archive itself when it is down. Env: EMPIARFS_SITE_CACHE.")(func)
    func = click.option("--ftp-url", default=None, metavar="URL",
                        help="Anonymous FTP base ('' disables FTP). Env: EMPIARFS_FTP_URL.")(func)
    func = click.option("--data-url", default=None, metavar="URL",
                        help="Data tree base. Env: EMPIARFS_DATA_URL.")(func)
    func = click.option("--api-url", default=None, metavar="URL",
                        help="REST API base. Env: EMPIARFS_API_URL.")(func)
    return func


def settings_from(ctx_obj: dict, **overrides) -> Settings:
    """Settings from file/env plus command-line overrides (None = unset)."""
    overrides.setdefault("site_cache", ctx_obj.get("site_cache"))
    return Settings.load(config_file=ctx_obj.get("config"), **overrides)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="empiarfs")
@click.option("-v", "--verbose", count=True, help="-v for info, -vv for debug logging.")
@click.option("--config", type=click.Path(dir_okay=False), default=None,
              help="Config file (INI, section [empiarfs]). Env: EMPIARFS_CONFIG.")
@click.pass_context
def main(ctx, verbose, config):
    """empiarfs: the EMPIAR archive as a read-only filesystem.

    \b
    Mount the whole archive and read files in place:
      empiarfs mount /mnt/empiar
      ls /mnt/empiar/EMPIAR-10002/data
    Try it offline on a built-in sample archive:
      empiarfs demo /tmp/empiar
    """
    if config is not None and not os.path.isfile(config):
        # Checked here as well as in Settings.load: commands that read no
        # settings must not ignore a mistyped --config either.
        raise InvalidInput(f"config file {config} does not exist")
    if verbose:
        level = logging.INFO if verbose == 1 else logging.DEBUG
    else:
        level = _configured_log_level(config)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ctx.ensure_object(dict)
    ctx.obj["config"] = config
    ctx.obj["verbose"] = verbose


def _configured_log_level(config) -> int:
    """The ``log_level`` setting (config file, EMPIARFS_LOG_LEVEL); a bad
    config file is reported by the command itself, so WARNING here."""
    from empiarfs.config import Settings
    from empiarfs.errors import EmpiarfsError

    try:
        name = Settings.load(config).log_level
    except (EmpiarfsError, OSError, ValueError):
        return logging.WARNING
    level = logging.getLevelName(str(name).strip().upper())
    return level if isinstance(level, int) else logging.WARNING


def _load_commands():
    # Imported for their side effect of attaching commands to `main`.
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}")


# One module per command group; each owner adds its own line.
COMMAND_MODULES = [
    "browse",
    "get",
    "cache",
    "mounts",
    "service",
    "export",
    "serve",
    "site_cache",
    "preview",
]

_load_commands()
