//! The identifiers of one event as they are collected: each raw value is normalised (hashed where
//! it is PII) through [`cdp_proto::normalize`], duplicates collapse, and refused values are
//! counted in [`DroppedIdentifiers`] instead of failing the event.

use crate::dropped::DroppedIdentifiers;
use cdp_proto::normalize::NormalizeError;
use cdp_proto::{normalize, Identifier, IdentifierKind};

pub(crate) struct IdentifierSet<'a> {
    ids: Vec<Identifier>,
    options: &'a cdp_proto::NormalizeOptions,
    dropped: &'a mut DroppedIdentifiers,
}

impl<'a> IdentifierSet<'a> {
    pub(crate) fn new(
        options: &'a cdp_proto::NormalizeOptions,
        dropped: &'a mut DroppedIdentifiers,
    ) -> Self {
        Self {
            ids: Vec::with_capacity(4),
            options,
            dropped,
        }
    }

    /// Normalises `raw` as `kind` and adds it. Returns its index, or `None` when the value was
    /// refused (and counted).
    pub(crate) fn add(&mut self, kind: IdentifierKind, raw: &str) -> Option<usize> {
        if is_unfilled_macro(raw) {
            self.dropped.record(&kind, NormalizeError::Blocked.code());
            return None;
        }
        match normalize(kind.clone(), raw, self.options) {
            Ok(id) => Some(self.push(id)),
            Err(e) => {
                self.dropped.record(&kind, e.code());
                None
            }
        }
    }

    /// Counts a value present in the payload that ingest chose not to use.
    pub(crate) fn refuse(&mut self, kind: &IdentifierKind, reason: &'static str) {
        self.dropped.record(kind, reason);
    }

    pub(crate) fn into_vec(self) -> Vec<Identifier> {
        self.ids
    }

    fn push(&mut self, id: Identifier) -> usize {
        if let Some(i) = self.ids.iter().position(|x| *x == id) {
            return i;
        }
        self.ids.push(id);
        self.ids.len() - 1
    }
}

/// MMP and ad-server postback templates leave their macros in place when they have no value
/// (`{idfa}`, `{gps_adid}`). Such a value names a field, not a person.
fn is_unfilled_macro(raw: &str) -> bool {
    let t = raw.trim();
    t.len() >= 2 && t.starts_with('{') && t.ends_with('}')
}
