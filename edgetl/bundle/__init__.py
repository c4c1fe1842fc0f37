"""Deployment bundles: a directory with ``manifest.json`` and the artifacts a device needs.

Torch-free by contract (docs/architecture.md): a device installs only the runtime extra.

* `open_bundle` / `Bundle`: read, validate (``manifest.schema.json``), verify hashes, update.
* `pack` / `unpack`: ship a bundle as one ``.tar.gz``; unpacking refuses unsafe members.
* `check.TOLERANCES` / `check.compare_outputs`: the golden samples' tolerances and comparison; running
  them through a backend is the runtime's (`edgetl.runtime.check`), as is `edgetl.runtime.bundle_info`.
"""

# Submodules share names with their main function; importing the functions here makes
# `edgetl.bundle.pack` the function, as the public API documents.
from edgetl.bundle.manifest import (
    SCHEMA_VERSION,
    Artifact,
    Bundle,
    open_bundle,
)
from edgetl.bundle.pack import pack, unpack
from edgetl.bundle.schema import manifest_schema, validate_manifest

__all__ = ["SCHEMA_VERSION", "Artifact", "Bundle", "manifest_schema", "open_bundle",
           "pack", "unpack", "validate_manifest"]
