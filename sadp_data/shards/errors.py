"""``ShardError``, in a module of its own so that the request layer below ``shards`` (``remote``,
``remote.fetch_requests``) can raise its subclasses without importing ``shards``."""


class ShardError(RuntimeError):
    """A shard is missing, truncated or does not match the index; the message names it."""
