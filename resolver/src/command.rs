//! Graph commands: operator requests (`forget`, `unmerge`) that change the graph. The resolver is
//! the single writer of its state, so commands travel on a topic and the resolver stage applies
//! them in order with its signals, with the same exactly-once discipline (the outcome, the graph
//! writes and the input offset are one atomic write).

use cdp_proto::{Identifier, IdentityChange, Timestamp};
use serde::{Deserialize, Serialize};

/// Default name of the topic graph commands travel on.
pub const COMMANDS_TOPIC: &str = "cdp.identity.commands";

/// A profile named by one of its identifiers or by its canonical id (retired ids resolve).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Identifier(Identifier),
    CanonicalId(String),
}

/// What to take out of a component on `unmerge`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmergePart {
    /// One link, by its id in the link log.
    Link(u64),
    /// Every link of one identifier: it becomes a profile of its own.
    Identifier(Identifier),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum CommandOp {
    /// Erase the profile holding `target`, and tombstone its identifiers.
    Forget { target: Target },
    /// Remove `part` from the profile `canonical_id` and rebuild that component.
    Unmerge {
        canonical_id: String,
        part: UnmergePart,
    },
}

/// A record on the commands topic (keyed by tenant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphCommand {
    /// Unique per request: a command applied once is never applied again.
    pub id: String,
    pub tenant: String,
    pub requested_at: Timestamp,
    #[serde(flatten)]
    pub op: CommandOp,
}

impl CommandOp {
    /// Bounded name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            CommandOp::Forget { .. } => "forget",
            CommandOp::Unmerge { .. } => "unmerge",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// The graph changed as asked.
    Applied,
    /// Nothing holds the target (a `forget` still tombstones a named identifier).
    NotFound,
    /// The command does not fit the state (e.g. the link is not in that profile); `detail` says why.
    Rejected,
}

/// What a command did, stored under its id in the `commands` column family.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandOutcome {
    pub command_id: String,
    pub tenant: String,
    pub op: String,
    pub status: CommandStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Identity changes emitted (also published on the changes topic).
    #[serde(default)]
    pub changes: Vec<IdentityChange>,
    /// Canonical ids whose profile was republished.
    #[serde(default)]
    pub profiles: Vec<String>,
    #[serde(default)]
    pub identifiers_erased: u64,
    #[serde(default)]
    pub links_erased: u64,
    #[serde(default)]
    pub links_removed: u64,
}

impl CommandOutcome {
    pub fn new(command: &GraphCommand, status: CommandStatus) -> Self {
        Self {
            command_id: command.id.clone(),
            tenant: command.tenant.clone(),
            op: command.op.name().to_string(),
            status,
            detail: None,
            changes: Vec::new(),
            profiles: Vec::new(),
            identifiers_erased: 0,
            links_erased: 0,
            links_removed: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdp_proto::{time::from_millis, IdentifierKind};

    #[test]
    fn commands_round_trip_as_readable_json() {
        let c = GraphCommand {
            id: "cmd-1".into(),
            tenant: "acme".into(),
            requested_at: from_millis(0),
            op: CommandOp::Unmerge {
                canonical_id: "cdp_1".into(),
                part: UnmergePart::Identifier(Identifier::new(IdentifierKind::DeviceId, "d")),
            },
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["op"], "unmerge");
        assert_eq!(v["part"]["identifier"]["kind"], "device_id");
        assert_eq!(serde_json::from_value::<GraphCommand>(v).unwrap(), c);
    }
}
