//! Erasure (right to be forgotten): `forget` removes a profile, its identifiers, nodes and every
//! link that mentions them, leaves a hashed tombstone per identifier so replays and late events
//! cannot recreate the person, and emits a `deleted` change so activation exits their cohorts.

use crate::command::{CommandOutcome, CommandStatus, GraphCommand, Target};
use crate::component::{self, Component};
use crate::matching::blocking;
use crate::tombstone::Tombstone;
use crate::txn::Txn;
use crate::Result;
use cdp_proto::{IdentityChange, IdentityChangeKind};

/// Applies a forget command inside `txn` (which must see every earlier write committed).
pub fn forget(txn: &mut Txn, command: &GraphCommand, target: &Target) -> Result<CommandOutcome> {
    let tenant = command.tenant.as_str();
    let tombstone = Tombstone {
        forgotten_at: command.requested_at,
        command_id: command.id.clone(),
    };
    let component = match component::root_of(txn, tenant, target)? {
        Some(root) => component::load(txn, tenant, root)?,
        None => None,
    };
    let Some(component) = component else {
        let mut outcome = CommandOutcome::new(command, CommandStatus::NotFound);
        outcome.detail = Some(match target {
            // An erasure request for an identifier we have not seen yet still holds for the future.
            Target::Identifier(id) => {
                if !txn.is_tombstoned(tenant, id)? {
                    txn.put_tombstone(tenant, id, &tombstone);
                    outcome.identifiers_erased = 1;
                }
                "no profile holds this identifier; it is tombstoned so it cannot be created".into()
            }
            Target::CanonicalId(_) => "no profile has this canonical id".into(),
        });
        return Ok(outcome);
    };
    let mut outcome = CommandOutcome::new(command, CommandStatus::Applied);
    erase(txn, &component, &tombstone, &mut outcome)?;
    let profile = component.profile;
    outcome.changes.push(IdentityChange {
        tenant: tenant.to_string(),
        kind: IdentityChangeKind::Deleted,
        canonical_id: profile.canonical_id.clone(),
        retired: profile.aliases.clone(),
        created: Vec::new(),
        rule: None,
        confidence: None,
        // Above every version the profile ever had, so consumers apply it after all of them.
        version: profile.version + 1,
        at: command.requested_at,
    });
    Ok(outcome)
}

fn erase(
    txn: &mut Txn,
    component: &Component,
    tombstone: &Tombstone,
    outcome: &mut CommandOutcome,
) -> Result<()> {
    let tenant = component.tenant.as_str();
    for l in component.links(txn)? {
        txn.erase_link(&l.link, l.a, l.b);
        outcome.links_erased += 1;
    }
    for (node, id) in &component.nodes {
        txn.erase_node(tenant, id, *node);
        txn.put_tombstone(tenant, id, tombstone);
        outcome.identifiers_erased += 1;
    }
    unblock(txn, component)?;
    let profile = &component.profile;
    txn.put_profile(component.root, None);
    txn.set_canonical(tenant, &profile.canonical_id, None);
    for alias in &profile.aliases {
        txn.set_alias(tenant, alias, None);
    }
    Ok(())
}

/// Takes the profile's nodes out of the blocking index, so no later record lists or is compared
/// with them: each node leaves exactly the keys of the record it was filed with, and that
/// record is erased with it.
fn unblock(txn: &mut Txn, component: &Component) -> Result<()> {
    for node in component.nodes.keys() {
        let Some(record) = txn.match_record(*node)?.cloned() else {
            continue;
        };
        for key in blocking::keys(&component.tenant, &record) {
            txn.with_block(&key, |block| ((), block.remove(*node)))?;
        }
        txn.set_match_record(*node, None);
    }
    Ok(())
}
