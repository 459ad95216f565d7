//! The one configuration file: per-stage sections, each validated by its own crate's types.
//! `cdp config --print-default` prints `default_config.toml`, a test keeps it equal to `Config::default()`.

use anyhow::{bail, Context, Result};
use cdp_activation::ActivationConfig;
use cdp_ingest::IngestConfig;
use cdp_resolver::ResolverConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;

pub const DEFAULT_TOML: &str = include_str!("default_config.toml");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    #[default]
    Embedded,
    Kafka,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusSection {
    pub backend: Backend,
    /// Partitions of every topic cdp creates.
    pub partitions: i32,
    pub kafka: cdp_bus::kafka::KafkaConfig,
    pub embedded: EmbeddedSection,
}

impl Default for BusSection {
    fn default() -> Self {
        Self {
            backend: Backend::Embedded,
            partitions: 4,
            kafka: Default::default(),
            embedded: Default::default(),
        }
    }
}

/// `[bus.embedded]`: how long the embedded bus keeps records (Kafka topics have their own
/// `retention.ms`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbeddedSection {
    /// Hours a record stays on a topic; 0 keeps every record.
    pub retention_hours: u64,
    /// Per-topic retention in hours, overriding `retention_hours` (0 keeps every record).
    pub topic_retention_hours: std::collections::BTreeMap<String, u64>,
    /// A stage's poll that finds fewer records than this waits `fetch_max_wait_ms` once for
    /// more (Kafka's `fetch.min.bytes`, in records): each batch's writes and wake-ups are then
    /// shared by more records. 1 returns every record as soon as it lands.
    pub fetch_min_records: usize,
    /// The longest such a poll waits, in milliseconds (Kafka's `fetch.wait.max.ms`); 0 never waits.
    pub fetch_max_wait_ms: u64,
}

impl Default for EmbeddedSection {
    fn default() -> Self {
        Self {
            retention_hours: 0,
            // The DLQ keeps rejected records' original bytes, raw e-mails and phone numbers
            // included: two weeks to inspect and replay them, as the Kafka topic has.
            topic_retention_hours: [(cdp_proto::topics::DLQ.to_string(), 14 * 24)].into(),
            fetch_min_records: 64,
            fetch_max_wait_ms: 2,
        }
    }
}

/// The HTTP listener of every process: health, readiness and metrics; the profile API where the
/// resolver runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// Address to listen on; empty disables the listener.
    pub listen: String,
    /// `/readyz` answers 503 while the process's consumer lag is above this many records.
    pub ready_max_lag: u64,
    /// Threads serving requests. Profile lookups (a few point reads) run on them; scans and lag
    /// reads run on tokio's blocking pool. More than one keeps a slow response from delaying
    /// the probes.
    pub workers: usize,
    /// Memory of the profile API's read tier (MiB): answers of recent lookups, kept until a
    /// committed change touches what they read. 0 disables it.
    pub read_tier_mb: usize,
    /// Niceness (0-19) of the pipeline's threads, stages and RocksDB's background work. Above 0
    /// the kernel runs the HTTP listener first when the cores are busy: lookups keep their
    /// latency while ingestion takes what is left and catches up when the load drops.
    pub pipeline_nice: i32,
    /// Keys of the profile API. With none, the API answers unauthenticated requests for
    /// `ingest.default_tenant`, read-only: fine on loopback, not on a network.
    pub api_keys: Vec<ApiKey>,
}

impl Default for HttpSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            ready_max_lag: 100_000,
            workers: 2,
            read_tier_mb: 64,
            pipeline_nice: 0,
            api_keys: Vec::new(),
        }
    }
}

/// A bearer token of the profile API, stored as its SHA-256 so the config holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// The one tenant this key reads (and erases in).
    pub tenant: String,
    /// Lower-case hex SHA-256 of the token: `printf %s "$TOKEN" | sha256sum`.
    pub token_sha256: String,
    /// `read` (every GET: profiles, explain, history, cohorts) and `erase` (DELETE).
    #[serde(default = "ApiKey::default_scopes")]
    pub scopes: Vec<Scope>,
}

impl ApiKey {
    fn default_scopes() -> Vec<Scope> {
        vec![Scope::Read]
    }
}

/// `cdp collect`: the Segment-compatible HTTP Tracking API in front of the raw topics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CollectSection {
    /// Address of the Tracking API, which also serves `/healthz`, `/readyz` and `/metrics`.
    pub listen: String,
    /// Largest message, as the raw record it becomes; at most `ingest.max_message_bytes`.
    pub max_message_bytes: usize,
    /// Largest `/v1/batch` body.
    pub max_batch_bytes: usize,
    /// Requests handled at once; more get 503 with `Retry-After`. Bounds memory to roughly
    /// this many times `max_batch_bytes` times four.
    pub max_in_flight_requests: usize,
    /// Write keys and the tenant each writes to. With none, every request is refused.
    pub write_keys: Vec<WriteKey>,
}

impl Default for CollectSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8088".into(),
            max_message_bytes: 32768,
            max_batch_bytes: 512000,
            max_in_flight_requests: 64,
            write_keys: Vec::new(),
        }
    }
}

/// A Segment write key, stored as its SHA-256 so the config holds no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteKey {
    /// The tenant whose raw topics receive this key's events.
    pub tenant: String,
    /// Lower-case hex SHA-256 of the key: `printf %s "$WRITE_KEY" | sha256sum`.
    pub key_sha256: String,
}

/// Parquet snapshots written on a schedule by the process that runs the resolver (as
/// `cdp snapshot` writes them on demand).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotSection {
    /// Directory the `dt=YYYY-MM-DD/` folders go to; empty: no scheduled snapshots.
    pub out: String,
    /// Seconds between snapshots, the first one this long after start; a later one on the same
    /// UTC day replaces that day's tables.
    pub every_secs: u64,
}

impl Default for SnapshotSection {
    fn default() -> Self {
        Self {
            out: String::new(),
            every_secs: 86_400,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Read,
    Erase,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub bus: BusSection,
    pub http: HttpSection,
    pub collect: CollectSection,
    pub snapshot: SnapshotSection,
    pub ingest: IngestConfig,
    pub resolver: ResolverConfig,
    pub activation: ActivationConfig,
}

impl Config {
    /// Parses `text` alone, without environment overrides.
    #[cfg(test)]
    pub fn from_toml(text: &str) -> Result<Self> {
        Self::from_toml_with_env(text, std::iter::empty())
    }

    /// The file at `path` (or the defaults when there is none), with `CDP_…` overrides from the
    /// process environment applied on top.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let text = match path {
            None => String::new(),
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("reading config {}", p.display()))?,
        };
        let config = Self::from_toml_with_env(&text, std::env::vars());
        match path {
            None => config,
            Some(p) => config.with_context(|| format!("in config {}", p.display())),
        }
    }

    /// Parses `text` and applies the overrides among `vars` (see [`crate::env_override`]).
    pub fn from_toml_with_env(
        text: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let mut table: toml::Table = toml::from_str(text)?;
        let defaults = toml::Table::try_from(Config::default())?;
        let applied = crate::env_override::apply(&mut table, &defaults, vars)?;
        let config: Config = toml::Value::Table(table).try_into().with_context(|| {
            if applied.is_empty() {
                String::from("invalid configuration")
            } else {
                format!("with overrides from {}", applied.join(", "))
            }
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<()> {
        if !(1..=1024).contains(&self.bus.partitions) {
            bail!("bus.partitions must be between 1 and 1024");
        }
        for (n, key) in self.http.api_keys.iter().enumerate() {
            if !cdp_proto::normalize::is_sha256_hex(&key.token_sha256) {
                bail!("http.api_keys[{n}].token_sha256 must be 64 lower-case hex digits");
            }
            if key.tenant.is_empty() {
                bail!("http.api_keys[{n}].tenant is empty");
            }
        }
        if self.http.workers == 0 {
            bail!("http.workers must be at least 1");
        }
        if !(0..=19).contains(&self.http.pipeline_nice) {
            bail!("http.pipeline_nice must be between 0 and 19");
        }
        if self.snapshot.every_secs == 0 {
            bail!("snapshot.every_secs must be at least 1");
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<SocketAddr>().is_err() {
            bail!(
                "http.listen {:?} is not an address like 0.0.0.0:8080",
                self.http.listen
            );
        }
        self.validate_collect()?;
        cdp_activation::Cohorts::compile(&self.activation.cohorts)?;
        // Thresholds, and the model file when one is named, are checked before anything runs.
        cdp_resolver::matching::Matcher::new(self.resolver.matching.clone())?;
        Ok(())
    }

    fn validate_collect(&self) -> Result<()> {
        let c = &self.collect;
        if !c.listen.is_empty() && c.listen.parse::<SocketAddr>().is_err() {
            bail!(
                "collect.listen {:?} is not an address like 0.0.0.0:8088",
                c.listen
            );
        }
        // What the collector accepts, ingest must accept too: its records are single messages.
        if c.max_message_bytes == 0 || c.max_message_bytes > self.ingest.max_message_bytes {
            bail!("collect.max_message_bytes must be between 1 and ingest.max_message_bytes");
        }
        if c.max_batch_bytes < c.max_message_bytes {
            bail!("collect.max_batch_bytes must be at least collect.max_message_bytes");
        }
        if c.max_in_flight_requests == 0 {
            bail!("collect.max_in_flight_requests must be at least 1");
        }
        for (n, key) in c.write_keys.iter().enumerate() {
            if !cdp_proto::normalize::is_sha256_hex(&key.key_sha256) {
                bail!("collect.write_keys[{n}].key_sha256 must be 64 lower-case hex digits");
            }
            if !cdp_ingest::config::is_valid_tenant(&key.tenant) {
                bail!("collect.write_keys[{n}].tenant must match [a-z0-9_-]{{1,64}}");
            }
            if c.write_keys[..n]
                .iter()
                .any(|k| k.key_sha256 == key.key_sha256)
            {
                bail!("collect.write_keys[{n}] repeats an earlier key");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_equals_defaults() {
        let parsed = Config::from_toml(DEFAULT_TOML).expect("template parses");
        assert_eq!(parsed, Config::default());
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = Config::from_toml("[resolver]\nbatch_sise = 3\n").unwrap_err();
        assert!(format!("{err:#}").contains("batch_sise"), "{err:#}");
    }

    #[test]
    fn environment_overrides_keys_and_kafka_properties() {
        let vars = [
            ("CDP_BUS__BACKEND", "kafka"),
            ("CDP_BUS__PARTITIONS", "12"),
            ("CDP_BUS__KAFKA__BROKERS", "kafka-0:9092,kafka-1:9092"),
            ("CDP_KAFKA_SASL_PASSWORD", "s3cret"),
            ("CDP_KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("CDP_INGEST__DEFAULT_TENANT", "1234"),
            ("CDP_HTTP__LISTEN", "0.0.0.0:9000"),
            ("CDP_LOG", "debug"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let c = Config::from_toml_with_env("[bus]\npartitions = 3\n", vars).unwrap();
        assert_eq!(c.bus.backend, Backend::Kafka);
        assert_eq!(c.bus.partitions, 12, "the environment wins over the file");
        assert_eq!(c.bus.kafka.brokers, "kafka-0:9092,kafka-1:9092");
        assert_eq!(c.bus.kafka.properties["sasl.password"], "s3cret");
        assert_eq!(c.bus.kafka.properties["security.protocol"], "SASL_SSL");
        assert_eq!(
            c.ingest.default_tenant, "1234",
            "typed by the key, not the text"
        );
        assert_eq!(c.http.listen, "0.0.0.0:9000");
    }

    #[test]
    fn bad_environment_overrides_name_the_variable() {
        for (name, value) in [
            ("CDP_RESOLVER__BATCH_SISE", "3"),
            ("CDP_RESOLVER__BATCH_SIZE", "many"),
        ] {
            let vars = [(name.to_string(), value.to_string())];
            let err = Config::from_toml_with_env("", vars).unwrap_err();
            assert!(format!("{err:#}").contains(name), "{err:#}");
        }
    }

    #[test]
    fn write_keys_come_from_the_file_or_the_environment_and_are_checked() {
        let hash = cdp_proto::normalize::sha256_hex("wk");
        let vars = [(
            "CDP_COLLECT__WRITE_KEYS".to_string(),
            format!("[{{tenant = \"acme\", key_sha256 = \"{hash}\"}}]"),
        )];
        let c = Config::from_toml_with_env("", vars).unwrap();
        assert_eq!(c.collect.write_keys[0].tenant, "acme");
        for (text, field) in [
            (
                "[[collect.write_keys]]\ntenant = \"acme\"\nkey_sha256 = \"wk\"\n".to_string(),
                "key_sha256",
            ),
            (
                format!("[[collect.write_keys]]\ntenant = \"Acme Inc\"\nkey_sha256 = \"{hash}\"\n"),
                "tenant",
            ),
            (
                "[collect]\nmax_message_bytes = 40000\n".to_string(),
                "max_message_bytes",
            ),
        ] {
            let err = Config::from_toml(&text).unwrap_err();
            assert!(format!("{err:#}").contains(field), "{err:#}");
        }
    }

    #[test]
    fn invalid_cohort_fails_at_load_with_its_key() {
        let text = "[[activation.cohorts]]\nkey = \"vip\"\nexpression = \"profile.x ==\"\n";
        let err = Config::from_toml(text).unwrap_err();
        assert!(format!("{err:#}").contains("vip"), "{err:#}");
    }
}
