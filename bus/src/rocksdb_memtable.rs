//! The memtable the stages' stores give their column families read by key only.

use rocksdb::Options;

/// Buckets of a hash-indexed memtable: a memtable flushed at 64 MiB holds a few hundred
/// thousand entries, a few per bucket.
const BUCKETS: usize = 100_000;

/// Most of a stage's reads and writes are point operations on keys spread at random (hashed
/// identifiers, node ids, a person's applied state), and a skip-list memtable pays a search of
/// a few cache misses for each insert and each read. A hash-indexed memtable (keyed by the
/// whole key: the "prefix" is the key) finds the key's bucket directly.
///
/// Iterating such a memtable in key order sorts a copy of it: column families scanned as they
/// are written keep the skip list, and every iterator over the others must ask for total order
/// (`ReadOptions::set_total_order_seek`), or a seek sees only the keys equal to the seek key.
/// Such a memtable takes no concurrent inserts: the database needs
/// `set_allow_concurrent_memtable_write(false)`.
pub fn hash_indexed_memtable(opts: &mut Options) {
    opts.set_prefix_extractor(rocksdb::SliceTransform::create_noop());
    opts.set_memtable_factory(rocksdb::MemtableFactory::HashLinkList {
        bucket_count: BUCKETS,
    });
}
