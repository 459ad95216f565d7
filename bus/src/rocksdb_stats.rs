//! Size and compaction figures of a RocksDB database (the embedded bus, the resolver's graph,
//! activation's membership), read from its properties when `/metrics` is scraped.

use rocksdb::properties::{
    CUR_SIZE_ALL_MEM_TABLES, ESTIMATE_LIVE_DATA_SIZE, ESTIMATE_PENDING_COMPACTION_BYTES,
    NUM_RUNNING_COMPACTIONS, TOTAL_SST_FILES_SIZE,
};
use rocksdb::DB;

/// One reading of a database. Sizes are summed over its column families; a property RocksDB
/// cannot report counts as zero rather than failing a scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RocksDbStats {
    /// Estimated bytes of live (not yet overwritten or deleted) data.
    pub live_data_size_bytes: u64,
    /// Bytes of all table files, including those compaction is about to drop.
    pub sst_files_size_bytes: u64,
    /// Estimated bytes compaction must rewrite to bring every level under its target.
    pub pending_compaction_bytes: u64,
    /// Compactions running now (one figure for the whole database).
    pub compactions_running: u64,
    /// Bytes held by active and immutable memtables.
    pub memtable_bytes: u64,
}

impl RocksDbStats {
    /// Reads `db`, whose column families are `cfs` (names that are not open are skipped).
    pub fn read<'a>(db: &DB, cfs: impl IntoIterator<Item = &'a str>) -> Self {
        let mut stats = Self {
            compactions_running: db
                .property_int_value(NUM_RUNNING_COMPACTIONS)
                .ok()
                .flatten()
                .unwrap_or(0),
            ..Self::default()
        };
        for handle in cfs.into_iter().filter_map(|name| db.cf_handle(name)) {
            let int = |name| {
                db.property_int_value_cf(&handle, name)
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            };
            stats.live_data_size_bytes += int(ESTIMATE_LIVE_DATA_SIZE);
            stats.sst_files_size_bytes += int(TOTAL_SST_FILES_SIZE);
            stats.pending_compaction_bytes += int(ESTIMATE_PENDING_COMPACTION_BYTES);
            stats.memtable_bytes += int(CUR_SIZE_ALL_MEM_TABLES);
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rocksdb::{ColumnFamilyDescriptor, Options};

    #[test]
    fn sizes_add_up_over_column_families() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = ["a", "b"].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = DB::open_cf_descriptors(&opts, dir.path(), cfs).unwrap();
        let empty = RocksDbStats::read(&db, ["a", "b"]);
        for name in ["a", "b"] {
            let cf = db.cf_handle(name).unwrap();
            for i in 0..1000u32 {
                db.put_cf(&cf, i.to_be_bytes(), [7u8; 100]).unwrap();
            }
        }
        let in_memory = RocksDbStats::read(&db, ["a", "b", "not_open"]);
        assert!(in_memory.memtable_bytes > empty.memtable_bytes);
        for name in ["a", "b"] {
            db.flush_cf(&db.cf_handle(name).unwrap()).unwrap();
        }
        let flushed = RocksDbStats::read(&db, ["a", "b"]);
        let one = RocksDbStats::read(&db, ["a"]);
        assert!(flushed.sst_files_size_bytes > one.sst_files_size_bytes);
        assert!(one.sst_files_size_bytes > 0);
        assert!(flushed.live_data_size_bytes > 0);
    }
}
