"""The autoindex parser: real-shaped Apache, nginx and http.server pages,
and hostile ones (pure logic, no network)."""

import calendar
import time

import pytest

from empiarfs.errors import BadResponse
from empiarfs.remote.listing import (
    ListingRow,
    parse_listing,
    parse_listing_date,
    parse_size_hint,
)

BASE = "https://ftp.ebi.ac.uk/empiar/world_availability/10002/data/"

# Modelled on docs/empiar.md §4.1-4.2 (Apache 2.4 mod_autoindex, HTMLTable).
APACHE_HEAD = """<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 3.2 Final//EN">
<html>
 <head>
  <title>Index of /empiar/world_availability/10002/data</title>
 </head>
 <body>
<h1>Index of /empiar/world_availability/10002/data</h1>
  <table>
   <tr><th valign="top"><img src="/icons/blank.gif" alt="[ICO]"></th><th><a href="?C=N;O=D">Name</a></th><th><a href="?C=M;O=A">Last modified</a></th><th><a href="?C=S;O=A">Size</a></th><th><a href="?C=D;O=A">Description</a></th></tr>
   <tr><th colspan="5"><hr></th></tr>
<tr><td valign="top"><img src="/icons/back.gif" alt="[PARENTDIR]"></td><td><a href="/empiar/world_availability/10002/">Parent Directory</a></td><td>&nbsp;</td><td align="right">  - </td><td>&nbsp;</td></tr>
"""
APACHE_TAIL = """   <tr><th colspan="5"><hr></th></tr>
</table>
</body></html>
"""


def apache_row(href, text, date="2025-02-07 19:49", size="1.2G", icon="[   ]"):
    return (
        f'<tr><td valign="top"><img src="/icons/unknown.gif" alt="{icon}"></td>'
        f'<td><a href="{href}">{text}</a></td><td align="right">{date}  </td>'
        f'<td align="right">{size}</td><td>&nbsp;</td></tr>\n'
    )


def apache_page(*rows):
    return APACHE_HEAD + "".join(rows) + APACHE_TAIL


def epoch(y, mo, d, h, mi):
    return float(calendar.timegm((y, mo, d, h, mi, 0)))


def test_apache_table_rows():
    page = apache_page(
        apache_row("100_movie_gc.mrcs", "100_movie_gc.mrcs", size="543M"),
        apache_row("gain-reference.mrc", "gain-reference.mrc", size=" 54M"),
        apache_row("meta.yaml", "meta.yaml", date="2024-12-31 23:59", size="650 "),
        apache_row("notes.txt", "notes.txt", size="6.8K"),
        apache_row("empty.bin", "empty.bin", size="  0 "),
        apache_row("harmonised/", "harmonised/", size="  - ", icon="[DIR]"),
    )
    rows = parse_listing(page, BASE)
    assert rows == [
        ListingRow("100_movie_gc.mrcs", False, 543 * 1024**2, epoch(2025, 2, 7, 19, 49)),
        ListingRow("gain-reference.mrc", False, 54 * 1024**2, epoch(2025, 2, 7, 19, 49)),
        ListingRow("meta.yaml", False, 650, epoch(2024, 12, 31, 23, 59)),
        ListingRow("notes.txt", False, int(6.8 * 1024), epoch(2025, 2, 7, 19, 49)),
        ListingRow("empty.bin", False, 0, epoch(2025, 2, 7, 19, 49)),
        ListingRow("harmonised", True, None, epoch(2025, 2, 7, 19, 49)),
    ]
    assert rows.rejected == 0  # sort links and the parent link are navigation


def test_names_come_from_href_decoded():
    long_name = "FoilHole_" + "9" * 60 + "_fractions.tiff.bz2"
    page = apache_page(
        # Apache truncates long link texts; the href is the truth.
        apache_row(long_name, long_name[:20] + "..&gt;"),
        apache_row("SEM%20Image%20-%20SliceImage%20-%20001.tif", "SEM Image - SliceImage - 001.tif"),
        apache_row("a,b%2Cc.mrc", "a,b,c.mrc"),
        apache_row("%C3%A9t%C3%A9%20%E2%84%AB.mrc", "été Å.mrc"),
        apache_row("Raw%20SEM%20images/", "Raw SEM images/", size="  - "),
        apache_row("amp&amp;ersand.txt", "amp&amp;ersand.txt"),
    )
    names = [r.name for r in parse_listing(page, BASE)]
    assert names == [long_name, "SEM Image - SliceImage - 001.tif", "a,b,c.mrc",
                     "été \u212b.mrc", "Raw SEM images", "amp&ersand.txt"]


def test_base_without_trailing_slash_and_absolute_child_href():
    page = apache_page(apache_row("/empiar/world_availability/10002/data/x.mrc", "x.mrc"))
    rows = parse_listing(page, BASE.rstrip("/"))
    assert [r.name for r in rows] == ["x.mrc"]


NGINX = """<html>
<head><title>Index of /empiar/world_availability/10002/data/</title></head>
<body>
<h1>Index of /empiar/world_availability/10002/data/</h1><hr><pre><a href="../">../</a>
<a href="sub%20dir/">sub dir/</a>                                           07-Feb-2025 19:49                   -
<a href="movie_1.mrcs">movie_1.mrcs</a>                                       07-Feb-2025 19:49           569560224
<a href="small.txt">small.txt</a>                                          31-Dec-2024 23:59                 650
</pre><hr></body>
</html>
"""


def test_nginx_pre_listing():
    rows = parse_listing(NGINX, BASE)
    assert rows == [
        ListingRow("sub dir", True, None, epoch(2025, 2, 7, 19, 49)),
        ListingRow("movie_1.mrcs", False, 569560224, epoch(2025, 2, 7, 19, 49)),
        ListingRow("small.txt", False, 650, epoch(2024, 12, 31, 23, 59)),
    ]


PYTHON_HTTP_SERVER = """<!DOCTYPE HTML>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Directory listing for /10002/data/</title>
</head>
<body>
<h1>Directory listing for /10002/data/</h1>
<hr>
<ul>
<li><a href="a%20b.mrc">a b.mrc</a></li>
<li><a href="sub/">sub/</a></li>
</ul>
<hr>
</body>
</html>
"""


def test_python_http_server_listing():
    rows = parse_listing(PYTHON_HTTP_SERVER, BASE)
    assert rows == [ListingRow("a b.mrc", False, None, None), ListingRow("sub", True, None, None)]


def test_empty_directory():
    assert parse_listing(apache_page(), BASE) == []


@pytest.mark.parametrize(
    "href",
    [
        "..", "../../etc/", ".", "%2e%2e/", "%2E%2E", "a%2Fb", "a%2fb/", "sub/inner.txt",
        "x%00y", "x%0Ay", "x%1by", "x%7F", "http://evil.example/x", "//evil.example/x",
        "/etc/passwd", "file.txt?download=1", "ftp://ftp.ebi.ac.uk/x", "%FF%FE",
        "a/../../../b", "x" * 4096, "%C3%A9" * 128,
    ],
)
def test_hostile_names_are_rejected(href, caplog):
    page = apache_page(apache_row(href, "x"), apache_row("good.mrc", "good.mrc"))
    rows = parse_listing(page, BASE)
    assert [r.name for r in rows] == ["good.mrc"]
    # ".." and "." resolve to navigation links (silently skipped); the rest
    # are counted and logged.
    if href not in ("..", "."):
        assert rows.rejected == 1
        assert "skipping unsafe listing entry" in caplog.text


def test_name_of_255_bytes_is_kept_256_rejected():
    ok, too_long = "a" * 255, "b" * 256
    rows = parse_listing(apache_page(apache_row(ok, ok), apache_row(too_long, too_long)), BASE)
    assert [r.name for r in rows] == [ok]
    assert rows.rejected == 1


def test_duplicates_keep_first():
    page = apache_page(apache_row("a.mrc", "a.mrc", size="1K"), apache_row("a.mrc", "a.mrc", size="2K"))
    assert parse_listing(page, BASE) == [ListingRow("a.mrc", False, 1024, epoch(2025, 2, 7, 19, 49))]


@pytest.mark.parametrize(
    "text",
    [
        "<html><body><table><tr><td><a href=",
        "<a href='x.mrc'>x</a" * 100,
        "<html>" + "<a " * 50000,
        "<table><tr><td><a href=\"x.mrc\">x.mrc</a></td><td align=\"right\">9999-99-99 99:99</td>"
        "<td>12Q</td></tr></table>",
        "<pre>" + "<" * 100000,
        "<html>\x00\x01\x02<a href=\"ok\">ok</a>",
    ],
)
def test_garbage_markup_never_raises(text):
    rows = parse_listing(text, BASE)
    assert all(isinstance(r, ListingRow) for r in rows)
    for row in rows:
        assert "/" not in row.name and row.name not in ("", ".", "..")


def test_malformed_date_and_size_give_none():
    page = ('<table><tr><td><a href="x.mrc">x.mrc</a></td><td align="right">2025-13-45 99:99</td>'
            '<td align="right">12Q</td></tr></table>')
    assert parse_listing(page, BASE) == [ListingRow("x.mrc", False, None, None)]


@pytest.mark.parametrize("text", ["", '{"EMPIAR-10002": {}}', "just some words", "\x00" * 1000])
def test_not_a_listing_is_bad_response(text):
    with pytest.raises(BadResponse, match="not return a directory listing"):
        parse_listing(text, BASE)


def test_100k_rows_fast():
    rows_html = "".join(
        apache_row(f"FoilHole_{i:06d}_fractions.tiff", f"FoilHole_{i:06d}_fractions.tiff", size="543M")
        for i in range(100_000)
    )
    page = apache_page(rows_html)
    began = time.perf_counter()
    rows = parse_listing(page, BASE)
    elapsed = time.perf_counter() - began
    assert len(rows) == 100_000
    assert rows[-1] == ListingRow("FoilHole_099999_fractions.tiff", False, 543 * 1024**2,
                                  epoch(2025, 2, 7, 19, 49))
    assert elapsed < 5.0, f"100k rows took {elapsed:.1f}s"


def test_100k_hostile_rows_fast():
    page = apache_page("".join(apache_row(f"..%2F{i}", "x") for i in range(100_000)))
    began = time.perf_counter()
    rows = parse_listing(page, BASE)
    assert rows == [] and rows.rejected == 100_000
    assert time.perf_counter() - began < 5.0


@pytest.mark.parametrize(
    "text,expected",
    [("543M", 543 * 1024**2), ("6.8K", 6963), ("650", 650), (" 54M", 54 * 1024**2),
     ("1.2G", int(1.2 * 1024**3)), ("2T", 2 * 1024**4), ("-", None), ("", None), ("12Q", None)],
)
def test_size_hints(text, expected):
    assert parse_size_hint(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [("2025-02-07 19:49  ", epoch(2025, 2, 7, 19, 49)),
     ("07-Feb-2025 19:49", epoch(2025, 2, 7, 19, 49)),
     ("2025-02-07 19:49:30", epoch(2025, 2, 7, 19, 49) + 30),
     ("07-Foo-2025 19:49", None), ("nothing", None), ("2025-02-30 10:00", None)],
)
def test_dates(text, expected):
    assert parse_listing_date(text) == expected
