//! Records decoded ahead of a stage, on a thread of their own.
//!
//! Decoding a record's JSON needs nothing from a stage's state, and takes a tenth of the
//! resolver's thread and more of activation's. While a stage applies a poll's records in order, a
//! helper thread decodes them from the front, and the stage takes each decoded record when it
//! reaches it. Neither waits for the other: a record the helper has not reached (or is still
//! decoding) is decoded by the stage itself, and the helper then skips it, so on a host whose
//! cores are busy the stage does what it did alone. Either way the stage gets what its own
//! decoder returns: the helper runs the same function.

use crate::Record;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

/// How a stage decodes one record for the helper: `None` leaves it to the stage.
pub type Decode<T> = Arc<dyn Fn(&Record) -> Option<T> + Send + Sync>;

/// One record's place: not reached yet, being decoded by the helper, decoded, or taken.
enum Slot<T> {
    Empty,
    Decoding,
    /// Boxed, so a poll's slots stay small whatever a decoded record's size.
    Ready(Box<T>),
    Taken,
}

/// The records of one poll, as far as the helper has decoded them.
pub struct Ahead<T> {
    records: Arc<Vec<Record>>,
    slots: Vec<Mutex<Slot<T>>>,
    decode: Decode<T>,
    /// Set once the stage is done with the poll: the helper stops.
    done: AtomicBool,
}

impl<T> Ahead<T> {
    fn slot(&self, i: usize) -> MutexGuard<'_, Slot<T>> {
        // A slot is only ever replaced whole: a panic cannot leave one half-changed.
        self.slots[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `r` decoded, if the helper got to it first; `None`: the stage decodes it. `r` is a
    /// record of this poll (any other record gives `None`).
    pub fn take(&self, r: &Record) -> Option<T> {
        let i = self.index_of(r)?;
        match std::mem::replace(&mut *self.slot(i), Slot::Taken) {
            Slot::Ready(decoded) => Some(*decoded),
            _ => None,
        }
    }

    /// Tells the helper the stage is done with this poll.
    pub fn finish(&self) {
        self.done.store(true, Ordering::Relaxed);
    }

    /// Where `r` lies in the poll, if it is one of its records (found by address: a stage
    /// hands over slices of the poll).
    fn index_of(&self, r: &Record) -> Option<usize> {
        let size = std::mem::size_of::<Record>().max(1);
        let base = self.records.as_ptr() as usize;
        let i = (r as *const Record as usize).checked_sub(base)? / size;
        std::ptr::eq(self.records.get(i)?, r).then_some(i)
    }

    /// The helper's part: decodes the records from the front, skipping what the stage took.
    fn fill(&self) {
        for (i, r) in self.records.iter().enumerate() {
            if self.done.load(Ordering::Relaxed) {
                return;
            }
            {
                let mut slot = self.slot(i);
                if !matches!(*slot, Slot::Empty) {
                    continue;
                }
                *slot = Slot::Decoding;
            }
            let decoded = (self.decode)(r);
            let mut slot = self.slot(i);
            if matches!(*slot, Slot::Decoding) {
                *slot = match decoded {
                    Some(d) => Slot::Ready(Box::new(d)),
                    None => Slot::Taken,
                };
            }
        }
    }
}

/// The helper thread, one per stage.
pub struct DecodeAhead<T> {
    jobs: Option<mpsc::Sender<Arc<Ahead<T>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<T: Send + 'static> DecodeAhead<T> {
    /// Starts the helper, a thread called `name` (Linux keeps the first 15 bytes).
    pub fn spawn(name: &str) -> crate::Result<Self> {
        let (jobs, todo) = mpsc::channel::<Arc<Ahead<T>>>();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for ahead in todo {
                    ahead.fill();
                }
            })
            .map_err(|e| crate::BusError::Storage(format!("cannot start {name}: {e}")))?;
        Ok(Self {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Starts decoding `records` (a poll) with `decode`. Call [`Ahead::finish`] once the stage
    /// is done with them.
    pub fn start(&self, records: Arc<Vec<Record>>, decode: Decode<T>) -> Arc<Ahead<T>> {
        let slots = records.iter().map(|_| Mutex::new(Slot::Empty)).collect();
        let ahead = Arc::new(Ahead {
            records,
            slots,
            decode,
            done: AtomicBool::new(false),
        });
        if let Some(jobs) = &self.jobs {
            // A helper that stopped leaves every record to the stage.
            let _ = jobs.send(ahead.clone());
        }
        ahead
    }
}

impl<T> Drop for DecodeAhead<T> {
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

    /// The stage's decoder: the value as a number, or why not; "skip" topics left to the stage.
    fn parse(r: &Record) -> Option<Result<u64, String>> {
        (r.topic != "skip").then(|| {
            let text = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default());
            text.parse::<u64>().map_err(|e| format!("{text}: {e}"))
        })
    }

    fn poll() -> Arc<Vec<Record>> {
        let mut records: Vec<Record> = (0..500).map(|i| record("t", i, &i.to_string())).collect();
        records[7] = record("t", 7, "{not a number");
        records[9] = record("skip", 9, "9");
        Arc::new(records)
    }

    #[test]
    fn each_record_is_what_the_stage_decodes_whoever_decoded_it() {
        let helper: DecodeAhead<Result<u64, String>> = DecodeAhead::spawn("test-decode").unwrap();
        let decode: Decode<Result<u64, String>> = Arc::new(parse);
        let records = poll();
        // Taken in order, from slices as a stage hands them over, while the helper runs.
        let ahead = helper.start(records.clone(), decode.clone());
        for part in [&records[..100], &records[100..]] {
            for r in part {
                let got = ahead.take(r).or_else(|| parse(r));
                assert_eq!(got, parse(r), "record {}", r.offset);
            }
        }
        ahead.finish();

        // A poll the helper decoded whole before the stage took any of it.
        let ahead = helper.start(records.clone(), decode);
        let started = std::time::Instant::now();
        while !matches!(*ahead.slot(499), Slot::Ready(_)) {
            assert!(started.elapsed().as_secs() < 30, "the helper decodes");
            std::thread::yield_now();
        }
        for r in records.iter() {
            let got = ahead.take(r);
            if r.topic == "skip" {
                assert_eq!(got, None, "left to the stage");
            } else {
                assert_eq!(got, parse(r), "record {}", r.offset);
            }
        }
        // Taken once; a record of another poll is not this poll's.
        assert_eq!(ahead.take(&records[0]), None);
        assert_eq!(ahead.take(&record("t", 0, "0")), None);
    }
}
