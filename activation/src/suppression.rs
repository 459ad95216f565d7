//! Suppression lists: identifiers that must never be sent to some destinations (unsubscribed,
//! do-not-contact, existing customers kept out of acquisition ads). A list holds values of one
//! identifier kind, from a file and inline; each is normalised exactly as ingest normalises it,
//! so a raw e-mail in the file matches the hash on the profile. A person holding any listed
//! identifier is kept out of the list's destinations (see `rules`); their membership is not
//! touched. Files are read when the definitions compile: at start and on every reload.

use crate::config::{ActivationConfig, SuppressionListConfig};
use crate::{ActivationError, Result};
use cdp_proto::{Identifier, IdentifierKind, NormalizeError, NormalizeOptions, Profile};
use std::collections::HashSet;
use std::io::BufRead;

/// Turns the raw values of one list into identifiers.
pub struct Normalizer {
    kind: IdentifierKind,
    options: NormalizeOptions,
}

impl Normalizer {
    /// Fails with the field at fault (`kind` or `phone_region`) and why.
    pub fn new(list: &SuppressionListConfig) -> Result<Self, (&'static str, String)> {
        let kind = list
            .kind
            .parse::<IdentifierKind>()
            .map_err(|e| ("kind", format!("{:?}: {e}", list.kind)))?;
        let options = NormalizeOptions::with_region(&list.phone_region)
            .map_err(|e| ("phone_region", format!("{:?}: {e}", list.phone_region)))?;
        Ok(Self { kind, options })
    }

    /// The identifier a raw value stands for; `None` for a placeholder (`test@test.com`, an
    /// all-zero device id) that ingest never lets onto a profile, so it can match no one. The
    /// error is a stable code, never the value: lists hold personal data.
    pub fn normalize(&self, raw: &str) -> Result<Option<Identifier>, &'static str> {
        match cdp_proto::normalize(self.kind.clone(), raw, &self.options) {
            Ok(id) => Ok(Some(id)),
            Err(NormalizeError::Blocked | NormalizeError::ZeroAdvertisingId) => Ok(None),
            Err(e) => Err(e.code()),
        }
    }
}

/// One compiled list.
struct List {
    values: HashSet<Identifier>,
}

/// Every list, and which of them apply to each destination.
pub struct Suppression {
    lists: Vec<List>,
    /// Per destination (same index as `Definitions::destinations`): indices into `lists`.
    by_destination: Vec<Vec<usize>>,
}

impl std::fmt::Debug for Suppression {
    // The values are personal data and can be millions: show only sizes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Suppression")
            .field(
                "list_sizes",
                &self
                    .lists
                    .iter()
                    .map(|l| l.values.len())
                    .collect::<Vec<_>>(),
            )
            .field("by_destination", &self.by_destination)
            .finish()
    }
}

impl Suppression {
    /// Reads and normalises every list of a validated config. An unreadable file or a value
    /// that is not an identifier of the list's kind fails, naming the list, file and line.
    pub fn compile(config: &ActivationConfig) -> Result<Self> {
        let mut lists = Vec::with_capacity(config.suppression_lists.len());
        for l in &config.suppression_lists {
            let fail = |message: String| {
                ActivationError::Config(format!(
                    "activation.suppression_lists[{}]: {message}",
                    l.key
                ))
            };
            let normalizer =
                Normalizer::new(l).map_err(|(field, e)| fail(format!("{field}: {e}")))?;
            let mut values = HashSet::new();
            for (i, raw) in l.values.iter().enumerate() {
                let id = normalizer
                    .normalize(raw)
                    .map_err(|code| fail(format!("values[{i}]: {code}")))?;
                values.extend(id);
            }
            if !l.file.is_empty() {
                let file = std::fs::File::open(&l.file)
                    .map_err(|e| fail(format!("file {}: {e}", l.file)))?;
                for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
                    let line = line.map_err(|e| fail(format!("file {}: {e}", l.file)))?;
                    let raw = line.trim();
                    if raw.is_empty() || raw.starts_with('#') {
                        continue;
                    }
                    let id = normalizer
                        .normalize(raw)
                        .map_err(|code| fail(format!("file {} line {}: {code}", l.file, n + 1)))?;
                    values.extend(id);
                }
            }
            lists.push(List { values });
        }
        let by_destination = config
            .destinations
            .iter()
            .map(|d| {
                config
                    .suppression_lists
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.destinations.is_empty() || l.destinations.contains(&d.key))
                    .map(|(i, _)| i)
                    .collect()
            })
            .collect();
        Ok(Self {
            lists,
            by_destination,
        })
    }

    /// Whether `profile` holds an identifier a list of destination `dest` names.
    pub fn suppressed(&self, dest: usize, profile: &Profile) -> bool {
        self.applies_to(dest) && self.names_any(dest, &profile.identifiers)
    }

    /// Whether a list of destination `dest` names one of `ids`.
    pub fn names_any(&self, dest: usize, ids: &[Identifier]) -> bool {
        let Some(lists) = self.by_destination.get(dest) else {
            return false;
        };
        ids.iter()
            .any(|id| lists.iter().any(|l| self.lists[*l].values.contains(id)))
    }

    /// Whether any list applies to destination `dest`.
    pub fn applies_to(&self, dest: usize) -> bool {
        self.by_destination.get(dest).is_some_and(|l| !l.is_empty())
    }

    /// How many distinct identifiers each list holds, in config order.
    pub fn sizes(&self) -> Vec<usize> {
        self.lists.iter().map(|l| l.values.len()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DestinationConfig;
    use cdp_proto::time::from_millis;

    fn list(
        key: &str,
        kind: &str,
        values: &[&str],
        destinations: &[&str],
    ) -> SuppressionListConfig {
        SuppressionListConfig {
            key: key.into(),
            kind: kind.into(),
            file: String::new(),
            values: values.iter().map(|s| s.to_string()).collect(),
            destinations: destinations.iter().map(|s| s.to_string()).collect(),
            phone_region: "US".into(),
        }
    }

    fn config(lists: Vec<SuppressionListConfig>) -> ActivationConfig {
        ActivationConfig {
            destinations: vec![
                DestinationConfig::kafka("ads", "t.ads"),
                DestinationConfig::kafka("crm", "t.crm"),
            ],
            cohorts: vec![],
            suppression_lists: lists,
            ..ActivationConfig::default()
        }
    }

    fn person(ids: Vec<Identifier>) -> Profile {
        Profile::new("acme", "cdp_1", ids, from_millis(0))
    }

    #[test]
    fn raw_values_match_the_hashes_ingest_stores_and_lists_scope_to_destinations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("phones.txt");
        std::fs::write(&path, "# unsubscribed by phone\n\n(415) 555-2671\n").unwrap();
        let mut phones = list("phones", "phone_sha256", &[], &[]);
        phones.file = path.to_string_lossy().into_owned();
        let config = config(vec![
            list(
                "emails",
                "email_sha256",
                &[" Jane.Doe@Example.COM "],
                &["ads"],
            ),
            phones,
            list("placeholders", "email_sha256", &["test@test.com"], &["crm"]),
        ]);
        config.validate().unwrap();
        let s = Suppression::compile(&config).unwrap();
        assert_eq!(s.sizes(), [1, 1, 0], "a placeholder can match no one");

        let opts = NormalizeOptions::default();
        let email =
            cdp_proto::normalize(IdentifierKind::EmailSha256, "jane.doe@example.com", &opts)
                .unwrap();
        let phone =
            cdp_proto::normalize(IdentifierKind::PhoneSha256, "+14155552671", &opts).unwrap();
        let other = Identifier::new(IdentifierKind::CrmId, "crm-1");
        assert!(s.suppressed(0, &person(vec![other.clone(), email.clone()])));
        assert!(
            !s.suppressed(1, &person(vec![email])),
            "the email list is for ads"
        );
        assert!(
            s.suppressed(1, &person(vec![phone])),
            "the phone list is global"
        );
        assert!(!s.suppressed(0, &person(vec![other])));
    }

    #[test]
    fn bad_values_fail_naming_the_list_and_line_but_never_the_value() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("emails.txt");
        std::fs::write(&path, "a@example.com\nnot-an-email\n").unwrap();
        let mut from_file = list("optouts", "email_sha256", &[], &[]);
        from_file.file = path.to_string_lossy().into_owned();
        let err = Suppression::compile(&config(vec![from_file.clone()]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("suppression_lists[optouts]"), "{err}");
        assert!(err.contains("line 2: invalid_email"), "{err}");
        assert!(!err.contains("not-an-email"), "{err}");

        from_file.file = dir
            .path()
            .join("missing.txt")
            .to_string_lossy()
            .into_owned();
        let err = Suppression::compile(&config(vec![from_file]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.txt"), "{err}");

        let inline = config(vec![list(
            "optouts",
            "email_sha256",
            &["x@y.com", "nope"],
            &[],
        )]);
        let err = inline.validate().unwrap_err().to_string();
        assert!(
            err.contains("suppression_lists[optouts].values[1]"),
            "{err}"
        );
        let kind = config(vec![list("optouts", "Email", &["x@y.com"], &[])]);
        let err = kind.validate().unwrap_err().to_string();
        assert!(err.contains("suppression_lists[optouts].kind"), "{err}");
        let scope = config(vec![list(
            "optouts",
            "email_sha256",
            &["x@y.com"],
            &["sms"],
        )]);
        let err = scope.validate().unwrap_err().to_string();
        assert!(
            err.contains("suppression_lists[optouts].destinations"),
            "{err}"
        );
    }
}
