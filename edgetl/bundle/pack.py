"""Pack a bundle into one ``.tar.gz`` for shipping, and unpack one safely.

Unpacking treats the archive as hostile. A member is refused (`BundleError`, nothing is left behind)
when it:

* has an absolute path, a drive letter, or a ``..`` component, or would land outside the target;
* is a symbolic or hard link whose target leaves the target directory;
* is a device file, FIFO or anything but a regular file, directory or in-bundle link;
* is larger than ``max_member_bytes``, or the members together exceed ``max_total_bytes``, or there
  are more than ``max_members`` of them.

Python's ``tarfile`` ``data`` filter (3.12, back-ported to 3.8.17+/3.11.4+) is applied on top where
available. Extraction goes to a temporary directory beside the target; the manifest is then
validated and every artifact's sha256 checked before the directory is renamed into place.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
import tempfile
from pathlib import Path

from edgetl.bundle.manifest import MANIFEST_NAME, Bundle, open_bundle
from edgetl.errors import BadInputError, BundleError
from edgetl.fileio import atomic_path

#: Refuse members bigger than this (a model or engine above 4 GiB does not fit a Jetson anyway).
MAX_MEMBER_BYTES = 4 << 30
MAX_TOTAL_BYTES = 16 << 30
MAX_MEMBERS = 10_000


def _normalize_mode(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def pack(bundle_dir: str | Path, out_tar_gz: str | Path, *, verify: bool = True) -> Path:
    """Write the bundle directory as a ``.tar.gz`` with ``manifest.json`` at the archive root.

    Args:
        bundle_dir: the bundle to pack; its hashes are verified first (unless ``verify=False``).
        out_tar_gz: the archive to write (atomically).
        verify: check every artifact before packing, so a corrupt bundle is never shipped.

    Raises:
        BundleError: not a bundle, a corrupt artifact, or a symbolic link inside the bundle.
    """
    bundle = open_bundle(bundle_dir, verify=verify)
    root = bundle.root.resolve()
    out = Path(out_tar_gz).resolve()
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            path = Path(dirpath) / name
            if path.is_symlink():
                raise BundleError(f"{path}: symbolic links cannot be packed", hint="replace the link by the file")
            if path == out or (name.startswith(".") and name.endswith(".tmp")):
                continue  # the archive itself, or a temp file of an interrupted atomic write
            files.append(path)
    with atomic_path(out) as tmp, tarfile.open(tmp, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        manifest = root / MANIFEST_NAME
        tar.add(manifest, arcname=MANIFEST_NAME, filter=_normalize_mode)
        for path in files:
            if path != manifest:
                tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False, filter=_normalize_mode)
    return Path(out_tar_gz)


def _inside(target: str, name: str) -> bool:
    """Whether archive path ``name`` (already normalised, relative) stays in ``target``."""
    full = os.path.realpath(os.path.join(target, name))
    return full == target or full.startswith(target + os.sep)


def _check_member(member: tarfile.TarInfo, target: str, seen_files: set[str]) -> str:
    """Return the member's normalised name, or raise naming the rule it breaks."""
    name = member.name
    where = f"archive member {name!r}"
    if not name or "\x00" in name:
        raise BundleError(f"{where}: empty or NUL in name")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise BundleError(f"{where}: absolute path refused")
    parts = name.replace("\\", "/").split("/")
    if ".." in parts:
        raise BundleError(f"{where}: '..' in path refused")
    norm = posixpath.normpath(name.replace("\\", "/"))
    if not _inside(target, norm):
        raise BundleError(f"{where}: would be written outside the target directory")
    if member.issym():
        link = member.linkname
        dest = posixpath.normpath(posixpath.join(posixpath.dirname(norm), link))
        if link.startswith(("/", "\\")) or dest.startswith("../") or dest == ".." or not _inside(target, dest):
            raise BundleError(f"{where}: symbolic link to {link!r} leaves the target directory")
    elif member.islnk():
        link = posixpath.normpath(member.linkname)
        if member.linkname.startswith(("/", "\\")) or link.startswith("..") or not _inside(target, link):
            raise BundleError(f"{where}: hard link to {member.linkname!r} leaves the target directory")
        if link not in seen_files:
            raise BundleError(f"{where}: hard link to {member.linkname!r}, which is not an earlier file of the archive")
    elif not (member.isfile() or member.isdir()):
        raise BundleError(f"{where}: device files, FIFOs and other special members are refused")
    return norm


def unpack(
    tar_gz: str | Path,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    verify: bool = True,
    max_member_bytes: int = MAX_MEMBER_BYTES,
    max_total_bytes: int = MAX_TOTAL_BYTES,
    max_members: int = MAX_MEMBERS,
) -> Bundle:
    """Safely extract a packed bundle into ``out_dir`` and return it, verified.

    Args:
        tar_gz: the archive (any compression tarfile reads).
        out_dir: the bundle directory to create. It must not exist (or be empty) unless ``overwrite``.
        overwrite: replace an existing ``out_dir`` (only after the new bundle verified).
        verify: check every artifact's size and sha256 (on by default; a device should never skip it).
        max_member_bytes, max_total_bytes, max_members: limits against archive bombs.

    Raises:
        BundleError: an unsafe or oversize member, a corrupt archive, or a bundle that fails verification.
        BadInputError: the archive does not exist, or ``out_dir`` exists and ``overwrite`` is False.
    """
    src = Path(tar_gz)
    out = Path(out_dir)
    if not src.is_file():
        raise BadInputError(f"archive not found: {src}")
    if out.exists() and not (out.is_dir() and not any(out.iterdir())) and not overwrite:
        raise BadInputError(f"{out} already exists", hint="choose another directory or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{out.name}.unpack-", dir=out.parent)
    target = os.path.realpath(staging)
    try:
        try:
            with tarfile.open(src, "r:*") as tar:
                members: list[tarfile.TarInfo] = []
                total = 0
                seen_files: set[str] = set()
                for member in tar:
                    if len(members) >= max_members:
                        raise BundleError(f"{src}: more than {max_members} members; refusing to unpack")
                    if member.size > max_member_bytes:
                        raise BundleError(
                            f"archive member {member.name!r}: {member.size} bytes exceeds the limit of "
                            f"{max_member_bytes}", hint="a bundle member this large is not a model; check the source"
                        )
                    total += max(member.size, 0)
                    if total > max_total_bytes:
                        raise BundleError(f"{src}: members add up to more than {max_total_bytes} bytes; refusing")
                    norm = _check_member(member, target, seen_files)
                    if member.isfile():
                        seen_files.add(norm)
                    members.append(member)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(target, members=members, filter="data")
                else:  # pragma: no cover - old Pythons: our checks above are the filter
                    tar.extractall(target, members=members)
        except tarfile.TarError as exc:
            if type(exc).__name__.endswith("FilterError"):  # the data filter refused a member
                raise BundleError(f"{src}: unsafe archive member refused ({exc})") from exc
            raise BundleError(f"{src}: not a readable tar archive ({exc})") from exc
        except (OSError, EOFError) as exc:
            raise BundleError(f"{src}: archive is truncated or corrupt ({exc})") from exc
        open_bundle(staging, verify=verify)  # manifest schema + every sha256, before anything moves
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / "b")
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return open_bundle(out, verify=False)
