"""The one error type of the bundle package."""


class BundleError(ValueError):
    """A bundle, bundle map or key in one is malformed; the message says what and where."""
