//! What an outbox has sent and not yet seen delivered, for a stage that flushes behind
//! ([`Producer::flush_behind`]): the keys of the write left landing stay in the outbox until a
//! later flush has waited for it, so a crash sends them again and loses nothing.

use crate::{Positions, Producer, Result};

/// The outbox keys of the write left landing (none after a flush that waited).
#[derive(Debug, Default)]
pub struct Landing(Vec<Vec<u8>>);

impl Landing {
    /// How many outbox entries the write landing holds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Flushes what was sent (its outbox keys `sent`), waiting for this write too or (`behind`)
    /// only for the one before, which keeps `sent` landing. Returns whether the positions ride
    /// with the write, and the keys now known delivered, for the caller to delete.
    pub fn flush(
        &mut self,
        producer: &mut dyn Producer,
        positions: Option<(&str, &Positions)>,
        mut sent: Vec<Vec<u8>>,
        behind: bool,
    ) -> Result<(bool, Vec<Vec<u8>>)> {
        let committed = if behind {
            producer.flush_behind(positions)?
        } else {
            producer.flush_with_positions(positions)?
        };
        let mut delivered = std::mem::take(&mut self.0);
        if behind {
            self.0 = sent;
        } else {
            delivered.append(&mut sent);
        }
        Ok((committed, delivered))
    }
}
