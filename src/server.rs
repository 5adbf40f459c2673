//! The server: shard cores and the replication core.
