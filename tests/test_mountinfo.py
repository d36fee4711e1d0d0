"""empiarfs.fuse.kernel_readahead.mount_device: finding a FUSE mount's device in the text
of /proc/self/mountinfo (pure logic)."""

from empiarfs.fuse.kernel_readahead import mount_device

MOUNTINFO = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
40 22 0:39 / /tmp/old\\040mount rw,nosuid,nodev,relatime shared:20 - fuse.empiarfs empiarfs rw,user_id=0
41 22 0:40 / /tmp/odd\\040name,\\134x rw,nosuid shared:21 - fuse.empiarfs empiarfs rw
42 22 0:41 / /tmp/plain rw - tmpfs tmpfs rw
43 22 0:42 / /tmp/stacked rw shared:22 - fuse.empiarfs empiarfs rw
44 43 0:43 / /tmp/stacked rw shared:23 - fuse.empiarfs empiarfs rw
45 22 0:44 / /tmp/tagged rw shared:24 master:3 - fuse.sshfs host: rw
"""


def test_escaped_names_are_matched():
    assert mount_device("/tmp/old mount", MOUNTINFO) == "0:39"
    assert mount_device("/tmp/odd name,\\x", MOUNTINFO) == "0:40"


def test_newest_mount_on_a_path_wins():
    assert mount_device("/tmp/stacked", MOUNTINFO) == "0:43"


def test_only_fuse_mounts_and_optional_fields():
    assert mount_device("/tmp/plain", MOUNTINFO) is None
    assert mount_device("/tmp/tagged", MOUNTINFO) == "0:44"
    assert mount_device("/nowhere", MOUNTINFO) is None


def test_malformed_lines_are_skipped():
    assert mount_device("/tmp/x", "garbage\n\n1 2 3\n" + MOUNTINFO) is None
    assert mount_device("/tmp/plain", "1 2 0:9 / /tmp/plain rw -\n") is None
