"""Deployment bundles: a directory with ``manifest.json`` and the artifacts a device needs.

Torch-free by contract (docs/architecture.md): a device installs only the runtime extra.

* `open_bundle` / `Bundle`: read, validate (``manifest.schema.json``), verify hashes, update.
* `pack` / `unpack`: ship a bundle as one ``.tar.gz``; unpacking refuses unsafe members.
* `check`: golden smoke test of any backend against the FP32 reference outputs.
* `bundle_info`: what ``edgetl info`` shows.
"""

# Submodules share names with their main function; importing the functions here makes
# `edgetl.bundle.pack` the function, as the public API documents.
from edgetl.bundle.check import check
from edgetl.bundle.info import bundle_info
from edgetl.bundle.manifest import (
    SCHEMA_VERSION,
    Artifact,
    Bundle,
    open_bundle,
)
from edgetl.bundle.pack import pack, unpack
from edgetl.bundle.schema import manifest_schema, validate_manifest

__all__ = ["SCHEMA_VERSION", "Artifact", "Bundle", "bundle_info", "check", "manifest_schema", "open_bundle",
           "pack", "unpack", "validate_manifest"]
