"""eyescreen: screen fundus photographs for eye disease, trained from scratch, with explanations."""

__version__ = "0.1.0"

from .models import create_model, list_models  # noqa: E402

__all__ = ["__version__", "create_model", "list_models"]
