"""The package version, importable without anything else."""

__version__ = "0.1.0"


def library_versions() -> dict:
    """Versions of the libraries that decide a run's numbers (recorded in every output)."""
    import platform

    import torch
    import transformers

    return {"depthprune": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}
