"""The package version (read by the build backend and exposed as ``mmsb_jax.__version__``)."""

__version__ = "0.1.0"
