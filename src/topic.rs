//! `cdp topic list|read`: what is on the bus, as JSON lines a person or `jq` can read.

use anyhow::Result;
use cdp_bus::{Bus, ConsumerOptions, Record, StartFrom};
use serde_json::{json, Value};
use std::io::Write;
use std::time::{Duration, Instant};

pub fn list(bus: &dyn Bus, out: &mut dyn Write) -> Result<()> {
    for t in bus.topics()? {
        let ends = bus.end_offsets(&t.name)?;
        let records: i64 = ends.iter().sum();
        writeln!(
            out,
            "{}\tpartitions={}\trecords={}",
            t.name, t.partitions, records
        )?;
    }
    Ok(())
}

/// Prints up to `limit` records of `topic`, from the beginning or from now. From the beginning
/// it stops at the end the topic had when the command started; either way it stops once the
/// topic has been idle for `idle`.
pub fn read(
    bus: &dyn Bus,
    topic: &str,
    from_beginning: bool,
    limit: Option<usize>,
    idle: Duration,
    out: &mut dyn Write,
) -> Result<usize> {
    let mut consumer = bus.consumer(ConsumerOptions {
        group: format!("cdp-topic-read-{}", std::process::id()),
        topics: vec![topic.to_string()],
        start: if from_beginning {
            StartFrom::Earliest
        } else {
            StartFrom::Latest
        },
        commit: false,
    })?;
    // Next offset still to print, per partition, up to the end as of now.
    let mut pending: Vec<(i64, i64)> = if from_beginning {
        bus.end_offsets(topic)?
            .into_iter()
            .map(|end| (0, end))
            .collect()
    } else {
        Vec::new()
    };
    let at_end =
        |pending: &[(i64, i64)]| from_beginning && pending.iter().all(|(next, end)| next >= end);
    let mut printed = 0;
    let mut last = Instant::now();
    while limit.is_none_or(|l| printed < l) && last.elapsed() < idle && !at_end(&pending) {
        let want = limit.map(|l| l - printed).unwrap_or(1000).min(1000);
        let records = consumer.poll(want, Duration::from_millis(100))?;
        if !records.is_empty() {
            last = Instant::now();
        }
        for r in &records {
            writeln!(out, "{}", to_json(r))?;
            printed += 1;
            if let Some(slot) = usize::try_from(r.partition)
                .ok()
                .and_then(|p| pending.get_mut(p))
            {
                slot.0 = slot.0.max(r.offset + 1);
            }
        }
    }
    consumer.close()?;
    Ok(printed)
}

fn text_or_bytes(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => Value::String(s.to_string()),
        Err(_) => json!({ "bytes_hex": b.iter().map(|x| format!("{x:02x}")).collect::<String>() }),
    }
}

/// A record as one JSON object; a JSON value is embedded as JSON, anything else as text.
pub fn to_json(r: &Record) -> Value {
    let value = match &r.value {
        None => Value::Null,
        Some(v) => serde_json::from_slice::<Value>(v).unwrap_or_else(|_| text_or_bytes(v)),
    };
    let headers: serde_json::Map<String, Value> = r
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), text_or_bytes(v)))
        .collect();
    json!({
        "topic": r.topic,
        "partition": r.partition,
        "offset": r.offset,
        "timestamp_ms": r.timestamp_ms,
        "key": r.key.as_deref().map(text_or_bytes),
        "headers": headers,
        "value": value,
    })
}
