"""Pack a bundle into one ``.tar.gz`` for shipping, and unpack one safely.

Unpacking treats the archive as hostile. A member is refused (`BundleError`, nothing is left behind)
when it:

* has an absolute path, a drive letter, or a ``..`` component, or would land outside the target;
* is a symbolic or hard link whose target leaves the target directory;
* is a device file, FIFO or anything but a regular file, directory or in-bundle link;
* repeats an earlier member's name, or needs a directory where an earlier member is a file;
* is larger than ``max_member_bytes``, or the members together exceed ``max_total_bytes``, or there
  are more than ``max_members`` of them.

Links are judged the way the kernel will resolve them, not lexically: `_Tree` builds the tree member
by member as extraction will, and every path is resolved through the links already in it (``a -> .``
then ``b -> a/..`` makes ``b`` the target's parent, although ``a/..`` reads as ``.``). Each member
is checked against the tree as it stands when it is written, and every link again against the final
tree, since a later link can change where an earlier one leads.

Python's ``tarfile`` ``data`` filter (3.12, back-ported to 3.8.17+, 3.9.17+, 3.10.12+, 3.11.4+) is
applied on top where available. Without it (3.10.0-3.10.11 and 3.11.0-3.11.3 meet
``requires-python``) the checks above are the whole guard, and edgetl applies the filter's rules on
file attributes itself: set-uid/set-gid/sticky bits and group/other write permission dropped, owner
read/write kept, no ownership taken from the archive. Extraction goes to a temporary directory
beside the target; the manifest is then validated and every artifact's sha256 checked before the
directory is renamed into place.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path

from edgetl.bundle.manifest import MANIFEST_NAME, Bundle, open_bundle
from edgetl.errors import BadInputError, BundleError
from edgetl.fileio import atomic_path

#: Refuse members bigger than this (a model or engine above 4 GiB does not fit a Jetson anyway).
MAX_MEMBER_BYTES = 4 << 30
MAX_TOTAL_BYTES = 16 << 30
MAX_MEMBERS = 10_000

#: Artifact kinds an archive leaves out unless asked for: the calibration statistics only re-quantization on a
#: workstation reads (tens of MB, often more than the models), never the device; quantize measures them again
#: when they are missing.
WORKSTATION_KINDS: tuple[str, ...] = ("calibration",)


def _normalize_mode(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def left_out(bundle: Bundle, kinds: Iterable[str]) -> list[dict[str, object]]:
    """The artifacts of ``kinds`` (path, kind, bytes) that `pack` leaves out of the archive."""
    wanted = set(kinds)
    return [{"path": a.path, "kind": a.kind, "bytes": a.bytes} for a in bundle.artifacts if a.kind in wanted]


def pack(bundle_dir: str | Path, out_tar_gz: str | Path, *, verify: bool = True,
         leave_out: Iterable[str] = WORKSTATION_KINDS) -> Path:
    """Write the bundle directory as a ``.tar.gz`` with ``manifest.json`` at the archive root.

    The artifacts of the kinds in ``leave_out`` (by default the calibration statistics) stay behind: the archive's
    manifest no longer lists them and records them under ``packed.left_out``, so the unpacked bundle verifies. The
    bundle directory itself is not changed.

    Args:
        bundle_dir: the bundle to pack; its hashes are verified first (unless ``verify=False``).
        out_tar_gz: the archive to write (atomically).
        verify: check every artifact before packing, so a corrupt bundle is never shipped.
        leave_out: artifact kinds not to ship (``()``: everything).

    Raises:
        BundleError: not a bundle, a corrupt artifact, or a symbolic link inside the bundle.
        BadInputError: ``leave_out`` names a kind that does not exist.
    """
    from edgetl.bundle.manifest import ARTIFACT_KINDS

    kinds = tuple(leave_out)
    unknown = sorted(set(kinds) - set(ARTIFACT_KINDS))
    if unknown:
        raise BadInputError(f"unknown artifact kind(s) to leave out: {', '.join(unknown)}",
                            hint=f"choose from {', '.join(ARTIFACT_KINDS)}")
    bundle = open_bundle(bundle_dir, verify=verify)
    root = bundle.root.resolve()
    out = Path(out_tar_gz).resolve()
    skipped = left_out(bundle, kinds)
    skipped_paths = {root / str(a["path"]) for a in skipped}
    manifest = root / MANIFEST_NAME
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames) + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            path = Path(dirpath) / name
            if path.is_symlink():
                raise BundleError(f"{path}: symbolic links cannot be packed", hint="replace the link by the file")
            if path == out or (name.startswith(".") and name.endswith(".tmp")):
                continue  # the archive itself, or a temp file of an interrupted atomic write
            if path != manifest and path not in skipped_paths:
                files.append(path)
    with atomic_path(out) as tmp, tarfile.open(tmp, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        if skipped:
            _add_bytes(tar, MANIFEST_NAME, _archive_manifest(bundle, skipped), template=manifest)
        else:
            tar.add(manifest, arcname=MANIFEST_NAME, filter=_normalize_mode)
        for path in files:
            tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False, filter=_normalize_mode)
    return Path(out_tar_gz)


def _archive_manifest(bundle: Bundle, skipped: list[dict[str, object]]) -> bytes:
    """The manifest as shipped: without the artifacts left behind, and saying which they were."""
    manifest = copy.deepcopy(bundle.manifest)
    paths = {a["path"] for a in skipped}
    manifest["artifacts"] = [a for a in manifest.get("artifacts", []) if a.get("path") not in paths]
    earlier = manifest.get("packed", {}).get("left_out", [])  # an unpacked archive packed again
    manifest["packed"] = {"left_out": [*earlier, *skipped]}
    return (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode("utf-8")


def _add_bytes(tar: tarfile.TarFile, arcname: str, data: bytes, *, template: Path) -> None:
    """Add ``data`` as a regular file, with the time of ``template`` and the archive's normalised modes."""
    info = _normalize_mode(tarfile.TarInfo(arcname))
    info.size = len(data)
    info.mtime = int(template.stat().st_mtime)
    tar.addfile(info, io.BytesIO(data))


#: Symbolic links followed while resolving one path before it counts as a loop (Linux's limit).
_MAX_LINK_HOPS = 40

_Path = tuple[str, ...]


class _Escapes(Exception):
    """A path resolves above the target directory (or to an absolute link target)."""


class _Tree:
    """The directory tree extraction will build, with paths resolved as the kernel will resolve them.

    Nodes are ``"dir"``, ``"file"`` or ``("link", target)``, keyed by their real location (components
    below the target). ``tarfile`` creates missing parent directories, follows links in a member's
    parent path and (for files) opens the path itself, so those are the rules simulated here.
    """

    def __init__(self) -> None:
        self.nodes: dict[_Path, str | tuple[str, str]] = {(): "dir"}

    def resolve(self, parts: list[str], *, base: _Path = (), follow_last: bool = True) -> _Path:
        """The real location of ``parts`` taken from directory ``base``.

        Raises:
            _Escapes: the path leads above the target directory or through an absolute link.
            BundleError: too many links (a loop), or a path through a regular file.
        """
        current = list(base)
        pending = list(reversed(parts))
        hops = 0
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if not current:
                    raise _Escapes()
                current.pop()
                continue
            here = (*current, name)
            node = self.nodes.get(here)
            if isinstance(node, tuple) and (pending or follow_last):
                hops += 1
                if hops > _MAX_LINK_HOPS:
                    raise BundleError(f"{'/'.join(here)}: symbolic links loop")
                target = node[1]
                if target.startswith("/"):
                    raise _Escapes()
                pending.extend(reversed(target.split("/")))
                continue
            if node == "file" and pending:
                raise BundleError(f"archive path {'/'.join(here)!r} is a file but is used as a directory")
            current.append(name)
        return tuple(current)

    def add(self, member: tarfile.TarInfo, parts: list[str], where: str) -> None:
        """Check ``member`` against the tree as it stands, then add it."""
        try:
            parent = self.resolve(parts[:-1])
        except _Escapes:
            raise BundleError(f"{where}: its directory resolves, through the archive's links, outside the target "
                              "directory") from None
        if self.nodes.get(parent) == "file":
            raise BundleError(f"{where}: {'/'.join(parent)!r} is a file of the archive, not a directory")
        for depth in range(1, len(parent) + 1):  # the parents tarfile will create
            self.nodes.setdefault(parent[:depth], "dir")
        if not parts:  # "." itself
            if not member.isdir():
                raise BundleError(f"{where}: only a directory may be named '.'")
            return
        here = (*parent, parts[-1])
        existing = self.nodes.get(here)
        if existing is not None and not (existing == "dir" and member.isdir()):
            raise BundleError(f"{where}: appears twice in the archive (a later member would replace or write "
                              "through the earlier one)")
        if member.issym():
            try:
                self.resolve(member.linkname.split("/"), base=parent)
            except _Escapes:
                raise BundleError(f"{where}: symbolic link to {member.linkname!r} leaves the target directory "
                                  "(resolved through the archive's links)") from None
            self.nodes[here] = ("link", member.linkname)
        elif member.islnk():
            try:
                source = self.resolve(member.linkname.split("/"))
            except _Escapes:
                raise BundleError(f"{where}: hard link to {member.linkname!r} leaves the target directory "
                                  "(resolved through the archive's links)") from None
            if self.nodes.get(source) != "file":
                raise BundleError(
                    f"{where}: hard link to {member.linkname!r}, which is not an earlier file of the archive"
                )
            self.nodes[here] = "file"
        else:
            self.nodes[here] = "dir" if member.isdir() else "file"

    def check_links(self) -> None:
        """Every link of the finished tree must still resolve inside it (later links change earlier ones)."""
        for path, node in list(self.nodes.items()):
            if isinstance(node, tuple):
                try:
                    self.resolve(list(path))
                except _Escapes:
                    raise BundleError(
                        f"archive member {'/'.join(path)!r}: symbolic link to {node[1]!r} leaves the target "
                        "directory once later members are extracted (resolved through the archive's links)"
                    ) from None


def _check_member(member: tarfile.TarInfo, tree: _Tree) -> None:
    """Check one member (in archive order) or raise naming the rule it breaks."""
    name = member.name
    where = f"archive member {name!r}"
    if not name or "\x00" in name:
        raise BundleError(f"{where}: empty or NUL in name")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise BundleError(f"{where}: absolute path refused")
    if "\\" in name:  # a separator on Windows, a plain character here: one meaning only is safe
        raise BundleError(f"{where}: backslash in path refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BundleError(f"{where}: '..' in path refused")
    if member.issym() or member.islnk():
        if "\x00" in member.linkname or not member.linkname:
            raise BundleError(f"{where}: empty or NUL in link target")
        if "\\" in member.linkname:
            raise BundleError(f"{where}: backslash in link target refused")
        if member.linkname.startswith("/") or (len(member.linkname) > 1 and member.linkname[1] == ":"):
            kind = "symbolic" if member.issym() else "hard"
            raise BundleError(f"{where}: {kind} link to {member.linkname!r} leaves the target directory (absolute)")
    elif not (member.isfile() or member.isdir()):
        raise BundleError(f"{where}: device files, FIFOs and other special members are refused")
    tree.add(member, parts, where)


def _data_filter_equivalent(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """What the ``data`` filter does to attributes, for Pythons without it (paths are checked already)."""
    clean = member.replace(deep=False) if hasattr(member, "replace") else copy.copy(member)
    if not clean.issym():
        mode = clean.mode & 0o755  # no set-uid, set-gid, sticky; no group/other write
        clean.mode = (mode | 0o600) if clean.isfile() or clean.islnk() else mode
    # Ownership from the archive is never applied: as root, tarfile would chown to these ids.
    clean.uid, clean.gid = os.getuid(), os.getgid()
    clean.uname = clean.gname = ""
    return clean


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
                tree = _Tree()
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
                    _check_member(member, tree)
                    members.append(member)
                tree.check_links()
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(target, members=members, filter="data")
                else:  # Python 3.10.0-3.10.11, 3.11.0-3.11.3: our checks are the filter
                    tar.extractall(target, members=[_data_filter_equivalent(m) for m in members])
        except tarfile.TarError as exc:
            if isinstance(exc, getattr(tarfile, "FilterError", ())):  # the data filter refused a member
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
