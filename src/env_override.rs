//! Configuration overrides from the environment, for what a Kubernetes pod gets from Secrets and
//! the chart rather than from the config file.
//!
//! - `CDP_<SECTION>__<KEY>` (levels separated by `__`, any case) sets that key, e.g.
//!   `CDP_BUS__KAFKA__BROKERS=kafka:9092` or `CDP_HTTP__LISTEN=0.0.0.0:8080`.
//! - `CDP_KAFKA_<PROPERTY>` sets a librdkafka property, the name lower-cased with `_` read as `.`:
//!   `CDP_KAFKA_SASL_PASSWORD` sets `sasl.password`.
//!
//! A value takes the type of the key it overrides (so `CDP_INGEST__DEFAULT_TENANT=1234` stays a
//! string); keys without a default are read as TOML scalars, falling back to a string.

use anyhow::{bail, Context, Result};
use toml::{Table, Value};

const PREFIX: &str = "CDP_";
const KAFKA_PREFIX: &str = "CDP_KAFKA_";

/// Applies the overrides among `vars` to `table`; `defaults` is the default config as a table,
/// which gives each key its type. Returns the names of the variables applied.
pub fn apply(
    table: &mut Table,
    defaults: &Table,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Vec<String>> {
    let mut vars: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with(PREFIX))
        .collect();
    // Deterministic order: the same environment always gives the same config.
    vars.sort();
    let mut applied = Vec::new();
    for (name, value) in &vars {
        let path: Vec<String> = if let Some(property) = name.strip_prefix(KAFKA_PREFIX) {
            let property = property.to_ascii_lowercase().replace('_', ".");
            ["bus", "kafka", "properties"]
                .into_iter()
                .map(String::from)
                .chain([property])
                .collect()
        } else if name.contains("__") {
            name[PREFIX.len()..]
                .split("__")
                .map(str::to_ascii_lowercase)
                .collect()
        } else {
            // CDP_LOG and friends: not configuration.
            continue;
        };
        if path.iter().any(String::is_empty) {
            bail!("environment variable {name}: empty key level");
        }
        let typed = typed_value(lookup(defaults, &path), value)
            .with_context(|| format!("environment variable {name}"))?;
        set(table, &path, typed).with_context(|| format!("environment variable {name}"))?;
        applied.push(name.clone());
    }
    Ok(applied)
}

fn lookup<'a>(table: &'a Table, path: &[String]) -> Option<&'a Value> {
    let (last, parents) = path.split_last()?;
    let mut t = table;
    for key in parents {
        t = t.get(key)?.as_table()?;
    }
    t.get(last)
}

fn typed_value(default: Option<&Value>, text: &str) -> Result<Value> {
    Ok(match default {
        Some(Value::String(_)) => Value::String(text.to_string()),
        Some(Value::Integer(_)) => Value::Integer(
            text.trim()
                .parse()
                .with_context(|| format!("{text:?} is not an integer"))?,
        ),
        Some(Value::Float(_)) => Value::Float(
            text.trim()
                .parse()
                .with_context(|| format!("{text:?} is not a number"))?,
        ),
        Some(Value::Boolean(_)) => Value::Boolean(
            text.trim()
                .parse()
                .with_context(|| format!("{text:?} is not true or false"))?,
        ),
        Some(Value::Table(_)) => bail!("names a section, not a key"),
        Some(Value::Array(_)) | Some(Value::Datetime(_)) | None => parse_scalar(text),
    })
}

/// A TOML value as written after `key = `, or the text itself when it is not one.
fn parse_scalar(text: &str) -> Value {
    format!("v = {text}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(text.to_string()))
}

fn set(table: &mut Table, path: &[String], value: Value) -> Result<()> {
    let (last, parents) = path.split_last().context("empty key")?;
    let mut t = table;
    for key in parents {
        t = t
            .entry(key.clone())
            .or_insert_with(|| Value::Table(Table::new()))
            .as_table_mut()
            .with_context(|| format!("{key} is not a section"))?;
    }
    t.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untyped_keys_read_as_toml_scalars_or_text() {
        assert_eq!(parse_scalar("0.9"), Value::Float(0.9));
        assert_eq!(parse_scalar("true"), Value::Boolean(true));
        assert_eq!(parse_scalar("[\"a\", \"b\"]").as_array().unwrap().len(), 2);
        assert_eq!(parse_scalar("SASL_SSL"), Value::String("SASL_SSL".into()));
    }

    #[test]
    fn a_section_cannot_be_overwritten_by_a_scalar() {
        let defaults: Table = "[bus.kafka]\nbrokers = \"x\"\n".parse().unwrap();
        let mut table = Table::new();
        let vars = [("CDP_BUS__KAFKA".to_string(), "y".to_string())];
        let err = apply(&mut table, &defaults, vars).unwrap_err();
        assert!(format!("{err:#}").contains("CDP_BUS__KAFKA"), "{err:#}");
    }
}
