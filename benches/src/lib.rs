//! Inputs and measurements shared by the benchmarks: a generated multi-source workload as raw
//! bus records, the signals ingest makes of it, latency percentiles, peak memory and CPU time
//! per thread.

use cdp_bus::Record;
use cdp_ingest::workload::{self, WorkloadOptions};
use cdp_ingest::IngestConfig;
use cdp_proto::Source;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::time::Duration;

/// The allocator the `cdp` binary runs with (src/main.rs), so every bench that links this library
/// measures what users run. (`benches/ingest.rs` does not link it and names it itself.)
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The raw records of a workload of `profiles` people, as they sit on the four raw topics
/// (one partition each, offsets from 0), in source order web, app, crm, media.
pub fn raw_records(
    config: &IngestConfig,
    profiles: usize,
    seed: u64,
) -> std::io::Result<Vec<Record>> {
    let dir = tempfile::tempdir()?;
    let options = WorkloadOptions {
        profiles,
        seed,
        now: workload::default_now(),
    };
    workload::generate_with(dir.path(), &options)?;
    // Ingest stamps `received_at` from the record's timestamp, as a broker would have set it.
    let received_ms = chrono::Utc::now().timestamp_millis();
    let mut records = Vec::new();
    for (topic, source) in config.raw_topics() {
        let file = std::fs::File::open(dir.path().join(workload::file_name(source)))?;
        for (offset, line) in std::io::BufReader::new(file).lines().enumerate() {
            records.push(Record {
                topic: topic.to_string(),
                partition: 0,
                offset: offset as i64,
                timestamp_ms: received_ms,
                key: None,
                value: Some(line?.into_bytes()),
                headers: Vec::new(),
            });
        }
    }
    Ok(records)
}

/// What ingest makes of `raw`: the signals, as records of the signals topic (one partition).
pub fn signals(config: &IngestConfig, raw: &[Record]) -> Vec<Record> {
    let options = config
        .normalize_options()
        .expect("the ingest config is valid");
    let mut out = Vec::new();
    for chunk in raw.chunks(config.batch_size.max(1)) {
        let batch =
            cdp_ingest::stage::process_batch(config, &options, chunk).expect("signals encode");
        out.extend(
            batch
                .records
                .into_iter()
                .filter(|r| r.topic == config.signals_topic),
        );
    }
    out.into_iter()
        .enumerate()
        .map(|(offset, r)| Record {
            topic: r.topic,
            partition: 0,
            offset: offset as i64,
            timestamp_ms: r.timestamp_ms.unwrap_or_default(),
            key: r.key,
            value: r.value,
            headers: r.headers,
        })
        .collect()
}

/// Raw records of one source only.
pub fn of_source<'a>(config: &IngestConfig, raw: &'a [Record], source: Source) -> Vec<&'a Record> {
    raw.iter()
        .filter(|r| config.source_of(&r.topic) == Some(source))
        .collect()
}

/// The `p`-th percentile (0..=100) of `samples`, which it sorts.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[rank.min(samples.len() - 1)]
}

/// Peak resident set size of this process so far (Linux `VmHWM`), in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// CPU time (user and system) each thread of this process has used so far, summed by thread
/// name, from `/proc` (in clock ticks of 1/100 s, Linux's fixed `USER_HZ`). Threads that already
/// ended are not in it; empty where `/proc` cannot tell.
pub fn thread_cpu() -> BTreeMap<String, Duration> {
    let mut used = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return used;
    };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ...`: the name may hold spaces, so split at the last ')'.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        // After the name: state is field 3, utime 14, stime 15.
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        let ticks = field(14).unwrap_or(0) + field(15).unwrap_or(0);
        *used
            .entry(stat[open + 1..close].to_string())
            .or_insert(Duration::ZERO) += Duration::from_millis(ticks * 10);
    }
    used
}

/// SplitMix64: a reproducible stream of pseudo-random numbers for synthetic data, without a
/// dependency (the same seed gives the same population on every run and machine).
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// SplitMix64's finaliser: a well-spread hash of `x`.
pub fn mix(x: u64) -> u64 {
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_samples() {
        let mut s: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut s, 50.0), Duration::from_millis(51));
        assert_eq!(percentile(&mut s, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&mut s, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&mut [], 99.0), Duration::ZERO);
    }

    #[test]
    fn a_workload_becomes_raw_records_and_signals() {
        let config = IngestConfig::default();
        let raw = raw_records(&config, 20, 7).unwrap();
        assert!(!of_source(&config, &raw, Source::Crm).is_empty());
        let signals = signals(&config, &raw);
        assert!(
            signals.len() > raw.len() / 2,
            "{} of {}",
            signals.len(),
            raw.len()
        );
        assert!(signals.iter().all(|r| r.topic == config.signals_topic));
        assert!(peak_rss_bytes().unwrap() > 0);
    }

    #[test]
    fn thread_cpu_is_by_thread_name() {
        let used = std::thread::Builder::new()
            .name("cpu-probe".into())
            .spawn(thread_cpu)
            .unwrap()
            .join()
            .unwrap();
        assert!(used.contains_key("cpu-probe"), "{used:?}");
    }
}
