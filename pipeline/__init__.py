"""metric-align engine: CLI, configuration, shard runner, ledger, Ray helpers and IO."""

__version__ = "0.1.0"
