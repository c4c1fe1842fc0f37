"""pack/unpack: round trip, and hostile archives refused with nothing left behind."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from edgetl.bundle import open_bundle, pack, unpack
from edgetl.errors import BadInputError, BundleError


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".unpack-" in p.name or ".old-" in p.name)


def test_pack_unpack_roundtrip_verifies_every_artifact(colour_bundle: Path, tmp_path: Path) -> None:
    archive = pack(colour_bundle, tmp_path / "colours.tar.gz")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert names[0] == "manifest.json"
        assert all(m.uid == 0 and not m.issym() for m in tar.getmembers())
    out = unpack(archive, tmp_path / "device" / "colours")
    assert [a.sha256 for a in out.artifacts] == [a.sha256 for a in open_bundle(colour_bundle).artifacts]
    with pytest.raises(BadInputError, match="already exists"):
        unpack(archive, tmp_path / "device" / "colours")
    again = unpack(archive, tmp_path / "device" / "colours", overwrite=True)
    assert again.root.is_dir() and _leftovers(tmp_path / "device") == []


def _hostile(path: Path, colour_bundle: Path, extra: tarfile.TarInfo, data: bytes = b"") -> Path:
    """A real packed bundle plus one hostile member appended."""
    with tarfile.open(path, "w:gz") as tar:
        for f in sorted(colour_bundle.rglob("*")):
            if f.is_file():
                tar.add(f, arcname=f.relative_to(colour_bundle).as_posix())
        extra.size = len(data) if extra.isfile() else 0
        tar.addfile(extra, io.BytesIO(data) if extra.isfile() else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o644
    return info


HOSTILE = {
    "absolute path": (_member("/tmp/edgetl-evil.txt"), "absolute path"),
    "dot-dot": (_member("golden/../../evil.txt"), r"'\.\.'"),
    "symlink escape": (_member("golden/link", tarfile.SYMTYPE, "../../../etc/passwd"), "symbolic link"),
    "absolute symlink": (_member("link", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
    "hardlink escape": (_member("hard", tarfile.LNKTYPE, "../../etc/passwd"), "hard link"),
    "hardlink absolute": (_member("hard", tarfile.LNKTYPE, "/etc/passwd"), "hard link"),
    "device file": (_member("dev", tarfile.CHRTYPE), "device files"),
    "fifo": (_member("fifo", tarfile.FIFOTYPE), "device files"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_unpack_refuses_hostile_members(colour_bundle: Path, tmp_path: Path, case: str) -> None:
    member, message = HOSTILE[case]
    archive = _hostile(tmp_path / "evil.tar.gz", colour_bundle, member, b"owned" if member.isfile() else b"")
    with pytest.raises(BundleError, match=message) as err:
        unpack(archive, tmp_path / "out" / "b")
    assert err.value.exit_code == 2
    assert not (tmp_path / "out" / "b").exists()
    assert _leftovers(tmp_path / "out") == []
    assert not Path("/tmp/edgetl-evil.txt").exists()


def test_unpack_refuses_oversize_member(colour_bundle: Path, tmp_path: Path) -> None:
    archive = _hostile(tmp_path / "big.tar.gz", colour_bundle, _member("blob.bin"), b"\0" * 200_000)
    with pytest.raises(BundleError, match="exceeds the limit"):
        unpack(archive, tmp_path / "out", max_member_bytes=100_000)
    with pytest.raises(BundleError, match="add up to more"):
        unpack(archive, tmp_path / "out", max_total_bytes=150_000)
    assert not (tmp_path / "out").exists()


def test_unpack_refuses_tampered_artifact(colour_bundle: Path, tmp_path: Path) -> None:
    bundle = shutil.copytree(colour_bundle, tmp_path / "b")
    archive = pack(bundle, tmp_path / "b.tar.gz")
    # Re-pack with one artifact altered but the manifest unchanged: the sha256 check must catch it.
    (bundle / "model.onnx").write_bytes((bundle / "model.onnx").read_bytes()[:-1] + b"\x01")
    with tarfile.open(archive, "w:gz") as tar:
        for f in sorted(bundle.rglob("*")):
            tar.add(f, arcname=f.relative_to(bundle).as_posix(), recursive=False)
    with pytest.raises(BundleError, match=r"model\.onnx: sha256"):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_unpack_refuses_garbage_and_missing(tmp_path: Path) -> None:
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar at all")
    with pytest.raises(BundleError, match="not a readable tar"):
        unpack(tmp_path / "junk.tar.gz", tmp_path / "out")
    with pytest.raises(BadInputError, match="not found"):
        unpack(tmp_path / "nope.tar.gz", tmp_path / "out")


def test_pack_refuses_corrupt_bundle_and_symlinks(colour_bundle: Path, tmp_path: Path) -> None:
    bundle = shutil.copytree(colour_bundle, tmp_path / "b")
    (bundle / "extra").symlink_to("/etc")
    with pytest.raises(BundleError, match="symbolic links"):
        pack(bundle, tmp_path / "b.tar.gz")
    (bundle / "extra").unlink()
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["artifacts"][0]["sha256"] = "0" * 64
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="sha256"):
        pack(bundle, tmp_path / "b.tar.gz")
    assert not (tmp_path / "b.tar.gz").exists()
