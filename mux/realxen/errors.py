"""The one error of the stand-in machinery: what this machine lacks, or what failed."""


class RealXenError(RuntimeError):
    """The stand-ins cannot be built or a real server cannot be run here; the message says
    why and what to install."""
