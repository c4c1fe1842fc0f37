"""Model registry and factory: ``edgetl.models.create(name, weights=..., num_classes=...)``.

Importing this package does not import torch; `create` does.
"""

from edgetl.models.registry import DEFAULT_MODEL, ModelInfo, get_model_info, list_models, register


def create(*args, **kwargs):
    """Build a registered model; see `edgetl.models.factory.create`."""
    from edgetl.models.factory import create as _create

    return _create(*args, **kwargs)


__all__ = ["DEFAULT_MODEL", "ModelInfo", "create", "get_model_info", "list_models", "register"]
