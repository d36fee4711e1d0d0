"""A short human-readable summary of an entry (the mount's README.txt and
``empiarfs info``)."""

from __future__ import annotations

from empiarfs.model import Entry


def _fmt(value, unit: str = "") -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, float):
        return f"{value:g}{unit}"
    return f"{value}{unit}"


def render_summary(entry: Entry) -> str:
    """Title, authors, dates, DOI, cross references and image sets as text."""
    lines = [f"{entry.accession}: {entry.title}", ""]
    if entry.authors:
        lines.append("Authors:       " + ", ".join(a.name for a in entry.authors))
    lines.append(f"Released:      {_fmt(entry.release_date)}")
    lines.append(f"Status:        {_fmt(entry.status)}")
    lines.append(f"DOI:           {_fmt(entry.doi)}")
    lines.append(f"Dataset size:  {_fmt(entry.dataset_size)}")
    lines.append(f"Experiment:    {_fmt(entry.experiment_type)}")
    if entry.emdb_refs:
        lines.append("EMDB:          " + ", ".join(entry.emdb_refs))
    for citation in entry.citations[:3]:
        where = " ".join(p for p in (citation.journal, str(citation.year or "")) if p)
        doi = f" doi:{citation.doi}" if citation.doi else ""
        lines.append(f"Citation:      {citation.title or '-'} ({where or '-'}){doi}")
    lines.append("")
    lines.append(f"Image sets ({len(entry.imagesets)}):")
    for i, s in enumerate(entry.imagesets, 1):
        pixel = _fmt(s.pixel_width, " Å")
        lines.append(f"  {i}. {s.name}")
        lines.append(f"     category: {_fmt(s.category)}; format: {_fmt(s.data_format)}; "
                     f"images: {_fmt(s.num_images)}; frames/image: {_fmt(s.frames_per_image)}; "
                     f"pixel: {pixel}")
        lines.append(f"     directory: {s.directory or '.'}")
    return "\n".join(lines) + "\n"
