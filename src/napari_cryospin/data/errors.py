"""The one error type of the particle I/O layer, so that the CLI and widgets can show its message as is."""


class ParticleFileError(ValueError):
    """A particle, stack or volume file that cannot be used; the message names the file, problem and fix."""
