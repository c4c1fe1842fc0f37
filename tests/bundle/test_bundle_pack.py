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


def _with_calibration(colour_bundle: Path, tmp_path: Path) -> Path:
    """A copy of the colour bundle with a calibration statistics file recorded, as quantize leaves it."""
    bundle_dir = Path(shutil.copytree(colour_bundle, tmp_path / "colours"))
    (bundle_dir / "calibration").mkdir()
    (bundle_dir / "calibration" / "stats-0.npz").write_bytes(b"\0" * 50_000)
    bundle = open_bundle(bundle_dir)
    bundle.add_artifact("calibration/stats-0.npz", kind="calibration", precision="int8", created_by="quantize")
    bundle.save()
    return bundle_dir


def test_pack_leaves_calibration_behind_and_the_archive_verifies(colour_bundle: Path, tmp_path: Path) -> None:
    bundle_dir = _with_calibration(colour_bundle, tmp_path)
    archive = pack(bundle_dir, tmp_path / "lean.tar.gz")
    with tarfile.open(archive) as tar:
        assert not any(n.startswith("calibration/") for n in tar.getnames())
    out = unpack(archive, tmp_path / "device" / "colours")  # verifies every listed artifact
    assert not (out.root / "calibration").exists()
    assert [a.kind for a in out.artifacts if a.kind == "calibration"] == []
    assert out.manifest["packed"]["left_out"] == [{"path": "calibration/stats-0.npz", "kind": "calibration",
                                                   "bytes": 50_000}]
    assert (bundle_dir / "calibration" / "stats-0.npz").is_file()  # the source bundle is untouched
    assert len(open_bundle(bundle_dir).find(kind="calibration")) == 1
    # Packed again from the device copy, the record of what stayed behind is kept.
    again = unpack(pack(out.root, tmp_path / "again.tar.gz"), tmp_path / "device2")
    assert again.manifest["packed"]["left_out"] == out.manifest["packed"]["left_out"]


def test_pack_with_everything_ships_calibration(colour_bundle: Path, tmp_path: Path) -> None:
    bundle_dir = _with_calibration(colour_bundle, tmp_path)
    out = unpack(pack(bundle_dir, tmp_path / "full.tar.gz", leave_out=()), tmp_path / "workstation")
    assert (out.root / "calibration" / "stats-0.npz").is_file() and "packed" not in out.manifest
    with pytest.raises(BadInputError, match="unknown artifact kind"):
        pack(bundle_dir, tmp_path / "x.tar.gz", leave_out=("calibrations",))
    assert not (tmp_path / "x.tar.gz").exists()


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
    "backslash dot-dot": (_member("golden\\..\\..\\evil.txt"), "backslash"),
    "duplicate name": (_member("manifest.json"), "appears twice"),
    "file used as a directory": (_member("manifest.json/x"), "not a directory"),
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


def _with_members(path: Path, colour_bundle: Path, extra: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    """A real packed bundle followed by the given members, in order."""
    with tarfile.open(path, "w:gz") as tar:
        for f in sorted(colour_bundle.rglob("*")):
            if f.is_file():
                tar.add(f, arcname=f.relative_to(colour_bundle).as_posix())
        for info, data in extra:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


#: Links that are harmless one by one, lexically, but escape once the tree is built.
LINK_CHAINS = {
    "dot then dot-dot through it": [
        (_member("a", tarfile.SYMTYPE, "."), b""), (_member("b", tarfile.SYMTYPE, "a/.."), b""),
        (_member("b/pwned"), b"owned"),
    ],
    "link made dangerous by a later link": [
        (_member("a", tarfile.SYMTYPE, "x/.."), b""), (_member("x", tarfile.SYMTYPE, "."), b""),
        (_member("a/pwned"), b"owned"),
    ],
    "escaping link nothing is written through": [
        (_member("a", tarfile.SYMTYPE, "x/.."), b""), (_member("x", tarfile.SYMTYPE, "."), b""),
    ],
    "deep chain": [
        (_member("d1", tarfile.DIRTYPE), b""), (_member("d1/up", tarfile.SYMTYPE, ".."), b""),
        (_member("top", tarfile.SYMTYPE, "d1/up/d1/up"), b""), (_member("esc", tarfile.SYMTYPE, "top/.."), b""),
        (_member("esc/pwned"), b"owned"),
    ],
    "hard link through a link": [
        (_member("a", tarfile.SYMTYPE, "."), b""), (_member("b", tarfile.SYMTYPE, "a/.."), b""),
        (_member("h", tarfile.LNKTYPE, "b/pwned"), b""),
    ],
}


@pytest.mark.parametrize("with_filter", [True, False], ids=["data-filter", "no-filter"])
@pytest.mark.parametrize("case", sorted(LINK_CHAINS))
def test_unpack_resolves_link_chains_against_the_final_tree(
    colour_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, with_filter: bool
) -> None:
    """edgetl's own checks catch the chain, with the real reason, also where tarfile has no data filter."""
    if not with_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)  # Python 3.10.0-3.10.11, 3.11.0-3.11.3
    archive = _with_members(tmp_path / "chain.tar.gz", colour_bundle, LINK_CHAINS[case])
    (tmp_path / "out").mkdir()
    with pytest.raises(BundleError, match=r"(link .* leaves|resolves, through the archive's links, outside) the "
                                         r"target directory") as err:
        unpack(archive, tmp_path / "out" / "b")
    assert "not a readable tar" not in str(err.value)
    assert sorted(p.name for p in tmp_path.rglob("pwned")) == []
    assert not (tmp_path / "out" / "b").exists() and _leftovers(tmp_path / "out") == []


def test_unpack_without_data_filter_applies_its_rules(
    colour_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where tarfile lacks the data filter, edgetl drops set-uid bits and group/other write itself."""
    monkeypatch.delattr(tarfile, "data_filter", raising=False)
    extra = _member("notes/readme.txt")
    extra.mode = 0o6777
    extra.uid, extra.gid, extra.uname, extra.gname = 4242, 4242, "someone", "somegroup"
    archive = _with_members(tmp_path / "modes.tar.gz", colour_bundle,
                            [(extra, b"hello"), (_member("lib", tarfile.SYMTYPE, "notes"), b"")])
    out = unpack(archive, tmp_path / "out" / "b")
    mode = (out.root / "notes" / "readme.txt").stat().st_mode & 0o7777
    assert mode == 0o755, oct(mode)
    assert (out.root / "lib" / "readme.txt").read_bytes() == b"hello"  # links that stay inside are kept


def test_unpack_accepts_dot_slash_names(colour_bundle: Path, tmp_path: Path) -> None:
    """``tar -C bundle -czf x.tar.gz .`` names members ``./…`` and includes ``./`` itself."""
    archive = tmp_path / "dot.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(colour_bundle, arcname=".")
    assert unpack(archive, tmp_path / "out").root.is_dir()
