"""Preview pictures in the mount: ``EMPIAR-N/previews/<image set>.png``.

Through a real FUSE mount of the sample: listing and stat render nothing
and fetch no data; the first open renders the picture that ``empiarfs
preview`` makes (a PNG Pillow decodes, of the expected size) from the
frames shown and nothing else; a second open is served from the kept
bytes with no request; a picture that cannot be rendered reads as EIO at
once, with one clear log line. ``empiarfs info`` names the same paths.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
import threading
import time

import mrcfile
import pytest
from click.testing import CliRunner
from PIL import Image
from support.archive import env_for
from support.mounting import mounted, requires_fuse, stats

from empiarfs.archive_server import ArchiveServer
from empiarfs.cli import main
from empiarfs.namespace.filesystem import EmpiarFS
from empiarfs.namespace.virtual import PreviewFailed, Previews
from empiarfs.errors import InvalidInput
from empiarfs.tools.preview import (
    SEARCH_DEPTH,
    SEARCH_LISTINGS,
    _files_below,
    _files_of,
    imageset_png,
    png_bytes,
    preview,
)

BLOCK = 64 * 1024
ACC = "EMPIAR-10002"
SET = "Movie stacks of 80S ribosomes"          # directory "data": 8 stacks of 12 x 256 x 256
FIRST = "data/100_movie_gc.mrcs"               # the set's first image file: its frame 0 is shown
TOMOGRAMS = "EMPIAR-11561/previews/Reconstructed tomograms for dataset 1 (211206).png"
IN_FOLDERS = "EMPIAR-11419/previews/Cryo Serial FIB_SEM of HeLa cells.png"  # only folders
IN_FOLDERS_DIR = "11419/data/HeLa"     # its TIFFs are in "Raw SEM images"


@pytest.fixture(scope="module")
def server(sample_root):
    """A server of this module's own, so its request counters are ours."""
    with ArchiveServer(sample_root, ftp=True) as srv:
        yield srv


@pytest.fixture
def settings(server, tmp_path, settings_for):
    return settings_for(server, tmp_path, block_size=BLOCK)


def _source(sample_root, rel):
    return os.path.join(sample_root, "world_availability", ACC.split("-")[1], *rel.split("/"))


def _cached_bytes(path) -> int:
    state = os.getxattr(path, "user.empiarfs.cache").decode()   # "N/size bytes cached" or "none"
    return 0 if state == "none" else int(state.split("/")[0])


def _renders(log_path) -> int:
    with open(log_path, errors="replace") as fh:
        return fh.read().count(": rendered (")


@requires_fuse
@pytest.mark.fuse
def test_preview_in_the_mount(server, settings, sample_root, tmp_path):
    mnt = tmp_path / "mnt"
    log_path = tmp_path / "mnt.log"
    # readahead=0: the block reader fetches what is read, so the bytes
    # fetched are the frames shown (block-rounded) and nothing more.
    with mounted(settings, mnt, "-o", "readahead=0"):
        entry = os.path.join(mnt, ACC)
        assert "previews" in os.listdir(entry) and "imagesets" in os.listdir(entry)
        png = os.path.join(entry, "previews", SET + ".png")
        # The names match the image-set links, plus .png.
        assert sorted(os.listdir(os.path.join(entry, "previews"))) == [
            link + ".png" for link in sorted(os.listdir(os.path.join(entry, "imagesets")))]

        # ls -l and stat: metadata only; no data request, no render.
        before = server.stats.snapshot()
        listing = subprocess.run(["ls", "-l", os.path.join(entry, "previews")],
                                 capture_output=True, text=True, check=True).stdout
        assert SET + ".png" in listing
        st = os.stat(png)
        assert st.st_size == 0 and os.path.isfile(png)
        after = server.stats.snapshot()
        assert after.get("requests.file", 0) == before.get("requests.file", 0)
        assert stats(mnt)["reader"]["bytes_fetched"] == 0
        assert _renders(log_path) == 0
        # A second round is answered from memory and the kernel: no request at all.
        subprocess.run(["ls", "-l", os.path.join(entry, "previews")], capture_output=True,
                       check=True)
        os.stat(png)
        assert server.stats.snapshot().get("requests", 0) == after.get("requests", 0)

        # First open renders: a PNG, 512 wide, of a 256 x 256 frame.
        start = time.monotonic()
        with Image.open(png) as picture:
            picture.load()
            assert picture.format == "PNG" and picture.mode == "L"
            assert picture.size == (512, 512)
        rendered_in = time.monotonic() - start
        with open(png, "rb") as fh:
            data = fh.read()
        assert _renders(log_path) == 1
        assert os.stat(png).st_size == len(data)    # sized at once, not after attr_timeout

        # Only the frames shown: header and frame 0 of the first stack.
        with mrcfile.open(_source(sample_root, FIRST), header_only=True) as ref:
            frame0_end = 1024 + int(ref.header.nsymbt) + 256 * 256 * 2
        needed = -(-frame0_end // BLOCK) * BLOCK
        first = _cached_bytes(os.path.join(entry, FIRST))
        assert 0 < first <= needed < os.path.getsize(_source(sample_root, FIRST))
        others = [n for n in os.listdir(os.path.join(entry, "data"))
                  if n.endswith(".mrcs") and n != os.path.basename(FIRST)]
        assert len(others) == 7
        assert all(_cached_bytes(os.path.join(entry, "data", n)) == 0 for n in others)
        assert stats(mnt)["reader"]["bytes_fetched"] <= needed

        # Second open: the kept bytes, no request, no render; cp and cat agree.
        requests = server.stats.snapshot().get("requests", 0)
        copy = tmp_path / "copy.png"
        subprocess.run(["cp", png, str(copy)], check=True)
        shutil.copyfile(png, tmp_path / "copy2.png")
        cat = subprocess.run(["cat", png], capture_output=True, check=True).stdout
        assert copy.read_bytes() == (tmp_path / "copy2.png").read_bytes() == cat == data
        assert server.stats.snapshot().get("requests", 0) == requests
        assert _renders(log_path) == 1

        # A first open by a copy (sendfile stops at the size the kernel holds).
        shutil.copyfile(os.path.join(mnt, TOMOGRAMS), tmp_path / "tomograms.png")
        with Image.open(tmp_path / "tomograms.png") as picture:
            assert picture.format == "PNG" and picture.width == 512
        assert _renders(log_path) == 2

        # The same picture as `empiarfs preview EMPIAR-10002/data` makes.
        with EmpiarFS(settings.replace(cache_dir=str(tmp_path / "other"))) as fs:
            assert imageset_png(fs, f"{ACC}/data") == data

        # `empiarfs info` names the same mount-relative path and the command.
        out = CliRunner().invoke(main, ["info", ACC], env=env_for(settings),
                                 catch_exceptions=False).output
        assert f"{ACC}/previews/{SET}.png" in out
        assert f"empiarfs preview {ACC}/data -o '{SET}.png'" in out
        assert os.path.isfile(os.path.join(mnt, f"{ACC}/previews/{SET}.png"))
    assert "cannot render the preview" not in log_path.read_text(errors="replace")
    print(f"first open rendered in {rendered_in:.2f} s")


@requires_fuse
@pytest.mark.fuse
def test_preview_of_a_set_whose_files_sit_in_folders(server, settings, sample_root, tmp_path):
    """EMPIAR-11419's image-set directory holds only folders: its picture is
    the first TIFF of the first folder that has any, the same picture
    `empiarfs preview` makes of the local copy of that directory."""
    with mounted(settings, tmp_path / "mnt") as mnt:
        with open(os.path.join(mnt, IN_FOLDERS), "rb") as fh:
            data = fh.read()

    # With those folders left out of the listing (HTTP only: FTP would name
    # them), nothing can be drawn: EIO at once, said once in the log.
    server.faults.omit_from_listing = {"Raw SEM images", "Segmentations"}
    bare = settings.replace(ftp_url="", cache_dir=str(tmp_path / "bare"))
    try:
        with mounted(bare, tmp_path / "bare-mnt", allow_errors=True) as mnt:
            start = time.monotonic()
            for _ in range(2):
                with pytest.raises(OSError) as failed, \
                        open(os.path.join(mnt, IN_FOLDERS), "rb") as fh:
                    fh.read()
                assert failed.value.errno == errno.EIO
            assert time.monotonic() - start < 10
            assert os.stat(os.path.join(mnt, IN_FOLDERS)).st_size == 0   # still listed, unsized
    finally:
        server.faults.omit_from_listing = ()
    text = (tmp_path / "bare-mnt.log").read_text(errors="replace")
    lines = [line for line in text.splitlines() if "cannot render the preview" in line]
    assert len(lines) == 1, text
    assert IN_FOLDERS in lines[0] and "EIO" in lines[0] and "no image files" in lines[0]

    with Image.open(io.BytesIO(data)) as picture:
        assert picture.format == "PNG" and picture.width == 512
    local = os.path.join(sample_root, "world_availability", *IN_FOLDERS_DIR.split("/"))
    assert not _files_of(local, None)          # nothing of its own
    assert data == png_bytes(preview(local))


def test_preview_descends_depth_first_within_bounds(tmp_path):
    """Pure logic on local folders: the first folder by name with image
    files wins, at most SEARCH_DEPTH levels down and SEARCH_LISTINGS
    folders listed; beyond that, one clear error."""
    def tiff(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.new("L", (8, 8)).save(path)

    root = tmp_path / "set"
    (root / "a_empty").mkdir(parents=True)
    (root / "b" / "notes.txt").parent.mkdir(parents=True)
    (root / "b" / "notes.txt").write_text("no images here")
    tiff(str(root / "b" / "deeper" / "x.tif"))
    tiff(str(root / "c" / "y.tif"))
    assert _files_below(str(root), None) == [str(root / "b" / "deeper" / "x.tif")]

    deep = tmp_path / "deep"
    tiff(str(deep.joinpath(*["d"] * (SEARCH_DEPTH + 1), "z.tif")))
    assert _files_below(str(deep), None) == []
    with pytest.raises(InvalidInput, match="no image files .* levels down"):
        preview(str(deep))

    wide = tmp_path / "wide"
    for i in range(SEARCH_LISTINGS):
        (wide / f"{i:02d}").mkdir(parents=True)
    tiff(str(wide / "zz" / "w.tif"))
    assert _files_below(str(wide), None) == []     # the listing budget ran out first
    tiff(str(wide / "00" / "v.tif"))
    assert _files_below(str(wide), None) == [str(wide / "00" / "v.tif")]


def test_previews_render_once_however_many_ask_and_stay_bounded():
    calls = []
    gate = threading.Event()

    def render(directory):
        calls.append(directory)
        gate.wait(5)
        return b"x" * 100

    previews = Previews(render, max_bytes=250)
    assert previews.size(("a",)) == 0 and not calls      # asking the size never renders
    got = []
    threads = [threading.Thread(target=lambda: got.append(previews.content(("a",), "E/d", "p")))
               for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    gate.set()
    for t in threads:
        t.join(5)
    assert got == [b"x" * 100] * 8 and calls == ["E/d"]
    assert previews.size(("a",)) == 100
    previews.content(("b",), "E/b", "p")
    previews.content(("c",), "E/c", "p")                  # 300 bytes > 250: "a" goes
    assert previews.size(("a",)) == 0 and previews.size(("c",)) == 100


def test_a_failed_render_is_eio_and_not_kept():
    attempts = []

    def render(directory):
        attempts.append(directory)
        raise NotADirectoryError(errno.ENOTDIR, "odd\nfailure")

    previews = Previews(render)
    for _ in range(2):
        with pytest.raises(PreviewFailed, match=r"^E/previews/x.png: cannot render the preview: "
                                                 r"\[Errno 20\] odd failure$") as failed:
            previews.content(("k",), "E/d", "E/previews/x.png")
        assert failed.value.errno == errno.EIO
    assert attempts == ["E/d", "E/d"] and previews.size(("k",)) == 0


def test_without_a_renderer_there_are_no_previews(settings):
    with EmpiarFS(settings) as fs:
        assert "previews" not in [n.name for n in fs.listdir(ACC)]
        assert not fs.exists(f"{ACC}/previews")
    with EmpiarFS(settings, previewer=imageset_png) as fs:
        node = fs.stat(f"{ACC}/previews/{SET}.png")
        assert node.size == 0 and node.preview == "data"
        data = fs.read_node(node, 0, 1 << 30)
        assert Image.open(io.BytesIO(data)).size == (512, 512)
        assert fs.stat(node.path).size == len(data)   # sized once rendered
