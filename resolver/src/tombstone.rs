//! Tombstones: the mark `forget` leaves for every erased identifier, so that replaying old
//! signals or late events never recreates the person. Keys hold a hash of the identifier, not the
//! identifier, so the erased value itself is not kept.

use cdp_proto::{Identifier, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What is kept about an erased identifier: when, and by which command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tombstone {
    pub forgotten_at: Timestamp,
    pub command_id: String,
}

/// `tenant \0 sha256(kind \0 value)`.
pub fn key(tenant: &str, id: &Identifier) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(id.kind.as_str().as_bytes());
    h.update([0]);
    h.update(id.value.as_bytes());
    let mut k = Vec::with_capacity(tenant.len() + 33);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k.extend_from_slice(&h.finalize());
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdp_proto::IdentifierKind;

    #[test]
    fn key_hides_the_value_and_separates_tenants() {
        let id = Identifier::new(IdentifierKind::UserId, "alice");
        let k = key("acme", &id);
        assert!(!k.windows(5).any(|w| w == b"alice"));
        assert_ne!(k, key("other", &id));
        assert_ne!(
            k,
            key("acme", &Identifier::new(IdentifierKind::CrmId, "alice"))
        );
    }
}
