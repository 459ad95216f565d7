//! Retention on the embedded bus: `cdp run` deletes the records `[bus.embedded]` no longer
//! keeps, once a minute. A Kafka cluster applies each topic's `retention.ms` itself, so there
//! this finds nothing to do.

use crate::config::EmbeddedSection;
use anyhow::{Context, Result};
use cdp_bus::Bus;
use std::time::{Duration, Instant};

/// How often expired records are looked for.
const EVERY: Duration = Duration::from_secs(60);

/// When expiry last ran.
#[derive(Default)]
pub struct Expiry {
    last: Option<Instant>,
}

impl Expiry {
    /// Deletes expired records of every topic when a pass is due (at the first call, then once a
    /// minute); returns how many went.
    pub fn tick(&mut self, bus: &dyn Bus, retention: &EmbeddedSection, now_ms: i64) -> Result<u64> {
        if self.last.is_some_and(|t| t.elapsed() < EVERY) {
            return Ok(0);
        }
        self.last = Some(Instant::now());
        let mut expired = 0;
        for topic in bus.topics()? {
            let hours = hours_for(retention, &topic.name);
            if hours == 0 {
                continue;
            }
            let cutoff = now_ms.saturating_sub((hours as i64).saturating_mul(3_600_000));
            let n = bus
                .expire(&topic.name, cutoff)
                .with_context(|| format!("expiring records of {}", topic.name))?;
            if n > 0 {
                tracing::info!(topic = %topic.name, records = n, hours, "expired records");
            }
            expired += n;
        }
        Ok(expired)
    }
}

/// Hours `topic` keeps its records; 0 keeps them all.
pub fn hours_for(retention: &EmbeddedSection, topic: &str) -> u64 {
    retention
        .topic_retention_hours
        .get(topic)
        .copied()
        .unwrap_or(retention.retention_hours)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdp_bus::embedded::EmbeddedBus;
    use cdp_bus::OutRecord;

    #[test]
    fn topics_expire_by_their_own_or_the_default_retention_once_a_minute() {
        let dir = tempfile::tempdir().unwrap();
        let bus = EmbeddedBus::open(dir.path()).unwrap();
        let hour = 3_600_000;
        let now = 1_000 * hour;
        let mut p = bus.producer().unwrap();
        for topic in ["cdp.dlq", "cdp.signals"] {
            bus.create_topic(topic, 1).unwrap();
            for age in [50, 20, 0] {
                let mut r = OutRecord::new(topic, Vec::new(), b"x".to_vec());
                r.timestamp_ms = Some(now - age * hour);
                p.send(r).unwrap();
            }
        }
        p.flush().unwrap();
        let retention = EmbeddedSection {
            retention_hours: 30,
            topic_retention_hours: [("cdp.dlq".to_string(), 10)].into(),
            ..EmbeddedSection::default()
        };
        assert_eq!(hours_for(&retention, "cdp.dlq"), 10);
        assert_eq!(hours_for(&retention, "cdp.signals"), 30);
        let mut expiry = Expiry::default();
        // The DLQ loses the records of 50 and 20 hours ago, the signals the one of 50.
        assert_eq!(expiry.tick(&bus, &retention, now).unwrap(), 3);
        // Not due again within the minute.
        assert_eq!(expiry.tick(&bus, &retention, now + 40 * hour).unwrap(), 0);
        let kept = EmbeddedSection {
            retention_hours: 0,
            topic_retention_hours: Default::default(),
            ..EmbeddedSection::default()
        };
        assert_eq!(
            Expiry::default()
                .tick(&bus, &kept, now + 40 * hour)
                .unwrap(),
            0
        );
    }
}
