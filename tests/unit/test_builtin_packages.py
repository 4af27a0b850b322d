"""Pairing the package names the recipe asks for with the files apt names."""

from __future__ import annotations

import pytest

from roost.errors import RoostError
from roost.image.builtin import PACKAGES, PICKED_FILES, pair_with_files


def test_files_pair_with_their_packages_whatever_order_apt_prints_them() -> None:
    files = ["sudo_1.9.13p3-1+deb12u4_amd64.deb", "libc6_2.36-9+deb12u14_amd64.deb",
             "procps_2%3a4.0.2-3_amd64.deb"]
    assert pair_with_files(["procps", "libc6", "sudo"], files) == [
        ("procps", "procps_2%3a4.0.2-3_amd64.deb"),
        ("libc6", "libc6_2.36-9+deb12u14_amd64.deb"),
        ("sudo", "sudo_1.9.13p3-1+deb12u4_amd64.deb"),
    ]


def test_a_package_apt_gave_no_file_for_is_named() -> None:
    with pytest.raises(RoostError, match=r"no file for \['bash'\]"):
        pair_with_files(["libc6", "bash"], ["libc6_2.36_amd64.deb", "libc-bin_2.36_amd64.deb"])


def test_a_package_is_either_unpacked_whole_or_picked_from() -> None:
    assert not set(PACKAGES) & set(PICKED_FILES)
    assert len(PACKAGES) == len(set(PACKAGES))
