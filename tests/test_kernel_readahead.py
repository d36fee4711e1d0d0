"""The kernel read-ahead policy (pure logic) and its setting."""

import pytest

from empiarfs.config import KiB, MiB, Settings
from empiarfs.errors import InvalidInput
from empiarfs.fuse.kernel_readahead import ReadaheadPolicy


def test_slow_until_a_reply_is_timed():
    policy = ReadaheadPolicy()
    assert policy.choose(0.0, None, 0) == 128 * KiB


def test_fast_quiet_link_gets_the_large_read_ahead():
    policy = ReadaheadPolicy()
    assert policy.choose(0.0, 0.002, 0) == 1 * MiB


def test_slow_link_keeps_the_kernel_default():
    policy = ReadaheadPolicy()
    assert policy.choose(0.0, 0.1, 0) == 128 * KiB
    assert policy.choose(1000.0, 0.1, 0) == 128 * KiB


def test_a_fault_drops_it_until_the_link_is_quiet_again():
    policy = ReadaheadPolicy(quiet_for=60.0)
    assert policy.choose(0.0, 0.002, 0) == 1 * MiB
    assert policy.choose(10.0, 0.002, 1) == 128 * KiB      # a stall or retry now
    assert policy.choose(69.0, 0.002, 1) == 128 * KiB      # quiet for 59 s: not yet
    assert policy.choose(70.0, 0.002, 1) == 1 * MiB        # quiet for 60 s
    assert policy.choose(80.0, 0.002, 3) == 128 * KiB      # each new fault restarts the wait
    assert policy.choose(139.0, 0.002, 3) == 128 * KiB
    assert policy.choose(140.0, 0.002, 3) == 1 * MiB


def test_faults_before_the_first_look_count():
    """A mount that met trouble before the policy first looked starts slow."""
    policy = ReadaheadPolicy(quiet_for=60.0)
    assert policy.choose(5.0, 0.002, 4) == 128 * KiB
    assert policy.choose(65.0, 0.002, 4) == 1 * MiB


@pytest.mark.parametrize("text, value", [("auto", "auto"), (" AUTO ", "auto"), ("0", 0),
                                         ("1M", 1 * MiB), ("512K", 512 * KiB)])
def test_setting_accepts_auto_or_a_size(text, value):
    assert Settings.load(env={"EMPIARFS_KERNEL_READAHEAD": text}).kernel_readahead == value


def test_setting_defaults_to_auto():
    assert Settings.load(env={}).kernel_readahead == "auto"


def test_setting_rejects_other_words():
    with pytest.raises(InvalidInput, match="want auto or a size"):
        Settings.load(env={"EMPIARFS_KERNEL_READAHEAD": "fast"})
