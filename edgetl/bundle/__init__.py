"""Deployment bundles: a directory with ``manifest.json`` and the artifacts a device needs.

Torch-free by contract (ARCHITECTURE.md): a device installs only the runtime extra.
"""

from edgetl.bundle.manifest import (
    SCHEMA_VERSION,
    Artifact,
    Bundle,
    open_bundle,
)

__all__ = ["SCHEMA_VERSION", "Artifact", "Bundle", "open_bundle"]
