//! RocksDB write batches sized before they are filled: grown by doubling, a batch of a few
//! hundred entries was copied over several times as it filled.

use rocksdb::WriteBatch;

/// A batch's fixed header: sequence number and count.
const HEADER: usize = 12;
/// Per entry beyond its key and value: the tag, the column family id and two varint lengths.
const ENTRY_OVERHEAD: usize = 16;

/// An empty batch with room for `entries` entries of `bytes` key and value bytes in all.
pub fn sized_write_batch(entries: usize, bytes: usize) -> WriteBatch {
    WriteBatch::with_capacity_bytes(HEADER + entries * ENTRY_OVERHEAD + bytes)
}
