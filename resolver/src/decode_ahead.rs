//! Signals decoded ahead of the stage, on a thread of their own.
//!
//! Decoding a signal's JSON is about a tenth of the resolver's thread, and needs nothing from
//! the graph. While the stage applies a poll's signals in order, a helper thread decodes them
//! from the front, and the stage takes each decoded signal when it reaches it. Neither waits for
//! the other: a signal the helper has not reached (or is still decoding) is decoded by the stage
//! itself, and the helper then skips it, so on a host whose cores are busy the stage does what
//! it did alone. Either way the signal is the one [`decode_signal`] returns.

use crate::stage::decode_signal;
use cdp_bus::Record;
use cdp_proto::dlq::Rejection;
use cdp_proto::Signal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

/// One record's place: not reached yet, being decoded by the helper, decoded, or taken.
enum Slot {
    Empty,
    Decoding,
    Ready(Box<Result<Signal, Rejection>>),
    Taken,
}

/// The signals of one poll, as far as the helper has decoded them.
pub struct Ahead {
    records: Arc<Vec<Record>>,
    slots: Vec<Mutex<Slot>>,
    /// Records of this topic are graph commands, decoded by the stage.
    commands_topic: String,
    /// Set once the stage is done with the poll: the helper stops.
    done: AtomicBool,
}

impl Ahead {
    fn slot(&self, i: usize) -> MutexGuard<'_, Slot> {
        // A slot is only ever replaced whole: a panic cannot leave one half-changed.
        self.slots[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The signal of `r`: decoded ahead if the helper got to it first, else decoded here. `r`
    /// is a record of this poll, or any other record (decoded here).
    pub fn take(&self, r: &Record) -> Result<Signal, Rejection> {
        if let Some(i) = self.index_of(r) {
            if let Slot::Ready(signal) = std::mem::replace(&mut *self.slot(i), Slot::Taken) {
                return *signal;
            }
        }
        decode_signal(r)
    }

    /// Where `r` lies in the poll, if it is one of its records (found by address: the stage
    /// hands over slices of the poll).
    fn index_of(&self, r: &Record) -> Option<usize> {
        let size = std::mem::size_of::<Record>().max(1);
        let base = self.records.as_ptr() as usize;
        let i = (r as *const Record as usize).checked_sub(base)? / size;
        std::ptr::eq(self.records.get(i)?, r).then_some(i)
    }

    /// The helper's part: decodes the signals from the front, skipping what the stage took.
    fn fill(&self) {
        for (i, r) in self.records.iter().enumerate() {
            if self.done.load(Ordering::Relaxed) {
                return;
            }
            if r.topic == self.commands_topic {
                continue;
            }
            {
                let mut slot = self.slot(i);
                if !matches!(*slot, Slot::Empty) {
                    continue;
                }
                *slot = Slot::Decoding;
            }
            let signal = Box::new(decode_signal(r));
            let mut slot = self.slot(i);
            if matches!(*slot, Slot::Decoding) {
                *slot = Slot::Ready(signal);
            }
        }
    }
}

/// The helper thread, one per stage.
pub struct DecodeAhead {
    jobs: Option<mpsc::Sender<Arc<Ahead>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DecodeAhead {
    pub fn spawn() -> std::io::Result<Self> {
        let (jobs, todo) = mpsc::channel::<Arc<Ahead>>();
        let thread = std::thread::Builder::new()
            .name("resolver-decode".into())
            .spawn(move || {
                for ahead in todo {
                    ahead.fill();
                }
            })?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Starts decoding `records` (a poll; its graph commands are left to the stage). Call
    /// [`Ahead::finish`] once the stage is done with them.
    pub fn start(&self, records: Arc<Vec<Record>>, commands_topic: &str) -> Arc<Ahead> {
        let slots = records.iter().map(|_| Mutex::new(Slot::Empty)).collect();
        let ahead = Arc::new(Ahead {
            records,
            slots,
            commands_topic: commands_topic.to_string(),
            done: AtomicBool::new(false),
        });
        if let Some(jobs) = &self.jobs {
            // A helper that stopped leaves every signal to the stage.
            let _ = jobs.send(ahead.clone());
        }
        ahead
    }
}

impl Ahead {
    /// Tells the helper the stage is done with this poll.
    pub fn finish(&self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

impl Drop for DecodeAhead {
    fn drop(&mut self) {
        // Closing the channel ends the helper's loop.
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(topic: &str, offset: i64, value: &str) -> Record {
        Record {
            topic: topic.into(),
            partition: 0,
            offset,
            timestamp_ms: 0,
            key: None,
            value: Some(value.as_bytes().to_vec()),
            headers: Vec::new(),
        }
    }

    fn signal_json(id: &str) -> String {
        let at = chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let s = Signal {
            tenant: "acme".into(),
            source: cdp_proto::Source::Web,
            event_id: id.into(),
            event_time: at,
            received_at: at,
            identifiers: vec![cdp_proto::Identifier::new(
                cdp_proto::IdentifierKind::UserId,
                id,
            )],
            links: Vec::new(),
            event: None,
            traits: Default::default(),
            consent: Default::default(),
        };
        String::from_utf8(s.to_json()).unwrap()
    }

    #[test]
    fn each_signal_is_the_one_decoded_in_place_whoever_decoded_it() {
        let helper = DecodeAhead::spawn().unwrap();
        let mut records: Vec<Record> = (0..500)
            .map(|i| record("cdp.signals", i, &signal_json(&format!("u{i}"))))
            .collect();
        records[7] = record("cdp.signals", 7, "{not json");
        records[9] = record("cdp.identity.commands", 9, "{}");
        let records = Arc::new(records);
        let ahead = helper.start(records.clone(), "cdp.identity.commands");
        // Taken in order, from slices as the stage hands them over, while the helper runs.
        for part in [&records[..100], &records[100..]] {
            for r in part {
                if r.topic == "cdp.identity.commands" {
                    continue;
                }
                let got = ahead.take(r).map_err(|e| e.code);
                let want = decode_signal(r).map_err(|e| e.code);
                assert_eq!(got, want, "record {}", r.offset);
            }
        }
        ahead.finish();
        // A poll the helper decoded whole before the stage took any of it.
        let ahead = helper.start(records.clone(), "cdp.identity.commands");
        let started = std::time::Instant::now();
        while !matches!(*ahead.slot(499), Slot::Ready(_)) {
            assert!(started.elapsed().as_secs() < 30, "the helper decodes");
            std::thread::yield_now();
        }
        let decoded_ahead = (0..500)
            .filter(|&i| matches!(*ahead.slot(i), Slot::Ready(_)))
            .count();
        assert_eq!(decoded_ahead, 499, "every signal but the command");
        for r in records.iter().filter(|r| r.topic == "cdp.signals") {
            let got = ahead.take(r).map_err(|e| e.code);
            assert_eq!(got, decode_signal(r).map_err(|e| e.code));
        }
        // A record of another poll is decoded in place.
        let other = record("cdp.signals", 0, &signal_json("x"));
        assert_eq!(ahead.take(&other), decode_signal(&other));
        drop(helper);
    }
}
