"""Finding the Debian mirror the machine's apt uses, in both source formats, for debootstrap."""
from __future__ import annotations

from images.debian_base import host_mirror

DEB822 = """\
Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_deb822_sources_name_the_mirror_of_the_suite(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    assert host_mirror("bookworm", tmp_path) == "http://mirror.example/debian"
    assert host_mirror("bookworm-security", tmp_path) == "http://mirror.example/debian-security"
    assert host_mirror("trixie", tmp_path) is None


def test_one_line_sources_with_options(tmp_path):
    (tmp_path / "sources.list").write_text("# deb http://old.example/debian bookworm main\n"
                                           "deb-src http://src.example/debian bookworm main\n"
                                           "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main\n")
    assert host_mirror("bookworm", tmp_path) == "http://mirror.example/debian"
    assert host_mirror("bookworm", tmp_path / "missing") is None
