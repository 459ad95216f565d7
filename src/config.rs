//! The one configuration file: per-stage sections, each validated by its own crate's types.
//! `cdp config --print-default` prints `default_config.toml`, a test keeps it equal to `Config::default()`.

use anyhow::{bail, Context, Result};
use cdp_activation::ActivationConfig;
use cdp_ingest::IngestConfig;
use cdp_resolver::ResolverConfig;
use serde::{Deserialize, Serialize};
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
}

impl Default for BusSection {
    fn default() -> Self {
        Self {
            backend: Backend::Embedded,
            partitions: 4,
            kafka: Default::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub bus: BusSection,
    pub ingest: IngestConfig,
    pub resolver: ResolverConfig,
    pub activation: ActivationConfig,
}

impl Config {
    pub fn from_toml(text: &str) -> Result<Self> {
        let config: Config = toml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// The file at `path`, or the defaults when there is none.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        match path {
            None => Ok(Config::default()),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config {}", p.display()))?;
                Self::from_toml(&text).with_context(|| format!("in config {}", p.display()))
            }
        }
    }

    fn validate(&self) -> Result<()> {
        if !(1..=1024).contains(&self.bus.partitions) {
            bail!("bus.partitions must be between 1 and 1024");
        }
        cdp_activation::Cohorts::compile(&self.activation.cohorts)?;
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
    fn invalid_cohort_fails_at_load_with_its_key() {
        let text = "[[activation.cohorts]]\nkey = \"vip\"\nexpression = \"profile.x ==\"\n";
        let err = Config::from_toml(text).unwrap_err();
        assert!(format!("{err:#}").contains("vip"), "{err:#}");
    }
}
