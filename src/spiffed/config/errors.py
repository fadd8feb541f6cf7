"""The one error type of the configuration package."""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A configuration file or flag is wrong.

    ``key`` is the dotted path of the offending setting (``server.ca_ttl``,
    ``plugins.NodeAttestor.x509pop.plugin_data.mode``), ``line`` its line in the file when
    known, and ``source`` the file. ``str()`` gives one line a person can act on.
    """

    def __init__(
        self,
        key: str,
        message: str,
        *,
        line: int | None = None,
        source: str | None = None,
    ) -> None:
        self.key = key
        self.detail = message
        self.line = line
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        where = self.key or "configuration"
        if self.line is not None:
            where += f" (line {self.line})"
        text = f"{where}: {self.detail}"
        if self.source:
            text = f"{self.source}: {text}"
        return text

    def with_source(self, source: str) -> ConfigError:
        """The same error, naming the file it came from (unless it already names one)."""
        return ConfigError(self.key, self.detail, line=self.line, source=self.source or source)
