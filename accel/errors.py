"""accel's exceptions. Each message says what was wrong and what to do next."""

from __future__ import annotations


class AccelError(Exception):
    """Base class for errors accel raises on purpose."""


class ProfileError(AccelError, ValueError):
    """A profile or config file, or a preset name, is invalid."""


class PluginError(AccelError):
    """A plugin failed to load or registered something invalid (fatal only in strict mode)."""


class DuplicatePluginError(PluginError):
    """Two distributions registered the same name in one namespace."""


class ModelNotAvailableError(AccelError):
    """Neither the requested model nor the bundled default could be found."""


class UnsupportedProfileError(AccelError):
    """The profile asks for something the selected backend or installed plugins cannot do."""


class CorpusError(AccelError, ValueError):
    """A text source is missing, malformed or too short for what was asked of it."""


class ArtifactError(AccelError):
    """An artifact cannot be written or loaded: it exists, is incomplete, tampered with, or in a refused format."""
