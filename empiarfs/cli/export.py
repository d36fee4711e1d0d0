"""``empiarfs export`` and ``empiarfs deposition``: metadata out."""

from __future__ import annotations

import json
import logging

import click

from empiarfs.cli import archive_options, main, settings_from
from empiarfs.errors import EmpiarfsError, InvalidInput
from empiarfs.export import deposition as deposition_mod
from empiarfs.export import lambda_ber
from empiarfs.remote.archive import Archive

log = logging.getLogger(__name__)


@main.command("export")
@click.argument("accession")
@click.option("--to", "target", type=click.Choice(["lambda-ber"]), default="lambda-ber",
              show_default=True, help="Target metadata model.")
@click.option("--format", "fmt", type=click.Choice(["yaml", "json"]), default="yaml",
              show_default=True, help="Output serialisation.")
@click.option("--json", "as_json", is_flag=True,
              help="Print JSON (the same as --format json, and as --json of other commands).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write here instead of standard output.")
@click.option("--with-files", is_flag=True,
              help="List every imageset directory (recursively) and emit one DataFile per "
                   "file; slow for entries with many files.")
@archive_options
@click.pass_context
def export_cmd(ctx, accession, target, fmt, as_json, output, with_files, api_url, data_url,
               ftp_url):
    """Export an entry's metadata as a lambda-ber-schema Dataset record.

    The record targets lambda-ber-schema main@6d962a15; EMPIAR fields the
    schema has no slot for travel as 'empiar:<path>=<value>' keywords, so
    `empiarfs deposition` can turn the record back into deposition JSON.

    \b
    Examples:
      empiarfs export EMPIAR-10002 --to lambda-ber
      empiarfs export 10934 --json -o 10934.lambda.json
      empiarfs export 10943 --with-files -o 10943.yaml
    """
    if as_json:
        fmt = "json"
    settings = settings_from(ctx.obj, api_url=api_url, data_url=data_url, ftp_url=ftp_url)
    with Archive(settings) as archive:
        entry = archive.entry(accession)
        files = _list_files(archive, entry) if with_files else None
    record = lambda_ber.entry_to_lambda_ber(entry, files=files, data_url=settings.data_url)
    _write(lambda_ber.dump(record, fmt), output)


@main.command("deposition")
@click.argument("dataset", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the deposition JSON here instead of standard output.")
@click.option("--overrides", "overrides_path", type=click.Path(exists=True, dir_okay=False),
              default=None,
              help="YAML/JSON object with deposition fields to add or replace "
                   "(authors, corresponding_author, citation, imagesets[i].voxel_type...).")
def deposition_cmd(dataset, output, overrides_path):
    """Turn a lambda-ber Dataset (YAML or JSON) into EMPIAR deposition JSON.

    Fields the Dataset cannot supply (corresponding author, principal
    investigator, citation, voxel type...) come from --overrides; when any
    required field is still missing, every missing path is listed and the
    command exits with status 1.

    \b
    Examples:
      empiarfs export 10934 -o 10934.yaml
      empiarfs deposition 10934.yaml -o deposition.json
      empiarfs deposition 10934.yaml --overrides people.yaml -o deposition.json
    """
    record = lambda_ber.load(_read(dataset))
    overrides = lambda_ber.load(_read(overrides_path)) if overrides_path else None
    doc = deposition_mod.deposition_from_lambda_ber(record, overrides=overrides)
    _write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", output)


def _list_files(archive, entry):
    """Every file under the entry's imageset directories (each visited once)."""
    seen, files = set(), []
    pending = sorted({s.directory for s in entry.imagesets if s.directory})
    while pending:
        rel = pending.pop(0)   # parents sort first, so nested sets are skipped
        if rel in seen or any(rel.startswith(d + "/") for d in seen):
            continue
        seen.add(rel)
        stack = [rel]
        while stack:
            for info in archive.listdir(entry.accession, stack.pop()):
                if info.is_dir:
                    stack.append(info.path)
                else:
                    files.append(info)
    return files


def _read(path) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}") from exc


def _write(text: str, output) -> None:
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise EmpiarfsError(f"cannot write {output}: {exc.strerror or exc}") from None
    log.info("wrote %s", output)
