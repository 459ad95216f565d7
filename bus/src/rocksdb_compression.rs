//! How the stages' RocksDB databases compress their table files.

use rocksdb::{DBCompressionType, Options};

/// Level 0 and the level it is compacted into are written as they are; deeper levels with LZ4.
/// (RocksDB sizes levels from the bottom up: while a database is small, the level level 0 is
/// compacted into is its last, and everything is plain.)
///
/// Every record a stage writes is flushed to level 0 and compacted into level 1 within
/// minutes, then moved down. With LZ4 at every level each of those steps compressed it again:
/// compressing flushes and the first compactions was a third of RocksDB's background work end
/// to end. Plain, they cost a copy; a record is compressed once, when it moves further down.
/// The price is disk: those two levels are bounded (a few memtables, then
/// `max_bytes_for_level_base`, 256 MiB), so at most a few hundred MiB more per database.
/// Files written before keep their own compression and read as they are.
pub fn compress_below_top_levels(opts: &mut Options) {
    use DBCompressionType::{Lz4, None as Plain};
    opts.set_compression_per_level(&[Plain, Plain, Lz4, Lz4, Lz4, Lz4, Lz4]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rocksdb::DB;

    fn sst_bytes(db: &DB) -> u64 {
        db.live_files().unwrap().iter().map(|f| f.size as u64).sum()
    }

    #[test]
    fn flushes_are_written_plain_and_the_bottom_level_is_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        // A database written before, with LZ4 everywhere, opened with the new layout.
        let mut before = opts.clone();
        before.set_compression_type(DBCompressionType::Lz4);
        let value = vec![b'a'; 1_000];
        {
            let db = DB::open(&before, dir.path()).unwrap();
            for i in 0..1_000u32 {
                db.put(i.to_be_bytes(), &value).unwrap();
            }
            db.flush().unwrap();
            assert!(sst_bytes(&db) < 200_000, "LZ4 shrinks 1 MB of one byte");
        }
        let mut after = opts.clone();
        after.set_compression_type(DBCompressionType::Lz4);
        compress_below_top_levels(&mut after);
        // Levels sized for a test: 2 MB fills a level below the one level 0 is compacted into.
        after.set_max_bytes_for_level_base(64 << 10);
        let db = DB::open(&after, dir.path()).unwrap();
        for i in 1_000..2_000u32 {
            db.put(i.to_be_bytes(), &value).unwrap();
        }
        db.flush().unwrap();
        let plain: u64 = db
            .live_files()
            .unwrap()
            .iter()
            .filter(|f| f.level == 0)
            .map(|f| f.size as u64)
            .max()
            .unwrap();
        assert!(plain > 1_000_000, "the new flush holds its 1 MB as it is");
        // While the database is small, the level level 0 is compacted into is its last, and
        // what reaches it stays plain.
        db.compact_range::<&[u8], &[u8]>(None, None);
        assert!(sst_bytes(&db) > 1_000_000);
        // Once the last level outgrows that, records compacted down to it are compressed.
        for i in 0..2_000u32 {
            db.put(i.to_be_bytes(), &value).unwrap();
        }
        db.flush().unwrap();
        db.compact_range::<&[u8], &[u8]>(None, None);
        assert!(sst_bytes(&db) < 400_000, "the bottom level is compressed");
        for i in 0..2_000u32 {
            assert_eq!(
                db.get(i.to_be_bytes()).unwrap().as_deref(),
                Some(&value[..])
            );
        }
    }
}
