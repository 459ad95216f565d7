//! Draining one webhook destination's queue: one thread per destination, so a slow or dead
//! receiver delays only itself, never the evaluation loop or other destinations. Events are
//! queued in RocksDB in the same write as the membership change that caused them, and leave the
//! queue only once the receiver acknowledged them or they were dead-lettered: nothing is lost.
//!
//! A batch keeps its `webhook-id` (and `Idempotency-Key`) across retries, and across restarts too:
//! the batch being attempted is recorded before the first attempt and formed again from that
//! record. Each event also carries its own stable `id`.

use crate::destination::{Destination, DestinationEvent, HEADER_DESTINATION};
use crate::membership::MembershipStore;
use crate::stage::{ActivationCounters, STAGE};
use crate::webhook::{backoff, Attempt, Client};
use crate::Result;
use cdp_bus::{Bus, OutRecord, Producer};
use cdp_proto::dlq::{self, Rejection};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

/// Header of DLQ records: the `webhook-id` of the batch the event was in.
pub const HEADER_WEBHOOK_ID: &str = "cdp.webhook.id";
/// Header of DLQ records: how many attempts were made.
pub const HEADER_ATTEMPTS: &str = "cdp.webhook.attempts";

/// How long an idle worker waits for a nudge before looking at its queue again.
const IDLE_WAIT: Duration = Duration::from_millis(200);
/// Granularity of interruptible sleeps between retries.
const SLEEP_SLICE: Duration = Duration::from_millis(50);

pub struct Worker<'a> {
    store: &'a MembershipStore,
    bus: &'a dyn Bus,
    dest: Destination,
    client: Client,
    counters: &'a ActivationCounters,
    producer: Option<Box<dyn Producer>>,
}

impl<'a> Worker<'a> {
    /// `dest` must be a webhook destination (it has a secret).
    pub fn new(
        store: &'a MembershipStore,
        bus: &'a dyn Bus,
        dest: Destination,
        counters: &'a ActivationCounters,
    ) -> Self {
        let secret = dest
            .secret
            .clone()
            .expect("webhook destinations resolve their secret in Destination::new");
        let client = Client::new(
            &dest.config.url,
            secret,
            Duration::from_millis(dest.config.timeout_ms),
        );
        Self {
            store,
            bus,
            dest,
            client,
            counters,
            producer: None,
        }
    }

    /// Delivers until `stop` is set. `wake` is nudged when new events were queued.
    pub fn run(mut self, stop: &AtomicBool, wake: &Receiver<()>) -> Result<()> {
        while !stop.load(Ordering::Relaxed) {
            if !self.deliver_batch(stop)? {
                match wake.recv_timeout(IDLE_WAIT) {
                    Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => std::thread::sleep(IDLE_WAIT),
                }
            }
        }
        Ok(())
    }

    /// Attempts the next batch until it is delivered, dead-lettered, or `stop` is set.
    /// Returns false when the queue was empty.
    pub fn deliver_batch(&mut self, stop: &AtomicBool) -> Result<bool> {
        let key = self.dest.key().to_string();
        let entries = match self.store.inflight(&key)? {
            Some(seqs) => {
                let mut entries = Vec::with_capacity(seqs.len());
                for seq in seqs {
                    if let Some(bytes) = self.store.delivery(&key, seq)? {
                        entries.push((seq, bytes));
                    }
                }
                entries
            }
            None => self.store.deliveries(&key, self.dest.config.batch_size)?,
        };
        if entries.is_empty() {
            if self.store.inflight(&key)?.is_some() {
                self.store.complete_deliveries(&key, &[])?;
                return Ok(true);
            }
            return Ok(false);
        }
        let seqs: Vec<u64> = entries.iter().map(|(s, _)| *s).collect();
        self.store.set_inflight(&key, &seqs)?;

        let mut events = Vec::with_capacity(entries.len());
        for (_, bytes) in &entries {
            match serde_json::from_slice::<DestinationEvent>(bytes) {
                Ok(e) => events.push(e),
                Err(e) => {
                    let rejection = Rejection::new("corrupt_delivery", e.to_string());
                    self.dead_letter_raw(bytes, &rejection)?;
                }
            }
        }
        if events.is_empty() {
            self.store.complete_deliveries(&key, &seqs)?;
            return Ok(true);
        }
        let id = batch_id(&events);
        let body = body(&key, &events);
        let cfg = &self.dest.config;
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let now = chrono::Utc::now().timestamp();
            let outcome = self.client.post(&id, &body, now);
            let (code, reason) = match outcome {
                Attempt::Delivered => {
                    self.counters
                        .webhook_delivered
                        .fetch_add(events.len() as u64, Ordering::Relaxed);
                    break;
                }
                Attempt::Rejected { reason } => ("webhook_rejected", reason),
                Attempt::Retry {
                    reason,
                    retry_after,
                } => {
                    if attempts < cfg.max_attempts {
                        self.counters
                            .webhook_retries
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            destination = %key,
                            attempt = attempts,
                            reason = %reason,
                            "webhook delivery failed; retrying"
                        );
                        let delay = backoff(
                            attempts,
                            Duration::from_millis(cfg.initial_backoff_ms),
                            Duration::from_millis(cfg.max_backoff_ms),
                            retry_after,
                        );
                        if !sleep_unless_stopped(delay, stop) {
                            // The in-flight record makes the next run retry this very batch.
                            return Ok(true);
                        }
                        continue;
                    }
                    ("webhook_retries_exhausted", reason)
                }
            };
            tracing::warn!(
                destination = %key,
                events = events.len(),
                attempts,
                code,
                reason = %reason,
                "webhook batch dead-lettered"
            );
            let message = format!("{reason} after {attempts} attempt(s)");
            self.dead_letter(&events, &id, attempts, &Rejection::new(code, message))?;
            break;
        }
        self.store.complete_deliveries(&key, &seqs)?;
        Ok(true)
    }

    fn producer(&mut self) -> Result<&mut Box<dyn Producer>> {
        if self.producer.is_none() {
            self.producer = Some(self.bus.producer()?);
        }
        Ok(self.producer.as_mut().expect("set above"))
    }

    fn headers(&self, rejection: &Rejection) -> Vec<(String, Vec<u8>)> {
        vec![
            (dlq::HEADER_STAGE.into(), STAGE.as_bytes().to_vec()),
            (dlq::HEADER_CODE.into(), rejection.code.as_bytes().to_vec()),
            (
                dlq::HEADER_MESSAGE.into(),
                rejection.message.as_bytes().to_vec(),
            ),
            (
                HEADER_DESTINATION.into(),
                self.dest.key().as_bytes().to_vec(),
            ),
        ]
    }

    fn dead_letter(
        &mut self,
        events: &[DestinationEvent],
        id: &str,
        attempts: u32,
        rejection: &Rejection,
    ) -> Result<()> {
        let mut headers = self.headers(rejection);
        headers.push((HEADER_WEBHOOK_ID.into(), id.as_bytes().to_vec()));
        headers.push((HEADER_ATTEMPTS.into(), attempts.to_string().into_bytes()));
        let topic = self.dest.config.dlq_topic.clone();
        let producer = self.producer()?;
        for e in events {
            producer
                .send(OutRecord::new(&topic, e.key(), e.to_json()).with_headers(headers.clone()))?;
        }
        producer.flush()?;
        self.counters
            .webhook_dead
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn dead_letter_raw(&mut self, bytes: &[u8], rejection: &Rejection) -> Result<()> {
        let headers = self.headers(rejection);
        let topic = self.dest.config.dlq_topic.clone();
        let key = self.dest.key().to_string();
        let producer = self.producer()?;
        producer.send(OutRecord::new(&topic, key, bytes.to_vec()).with_headers(headers))?;
        producer.flush()?;
        self.counters.webhook_dead.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Sleeps `d`, in slices; false when `stop` was set meanwhile.
fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) -> bool {
    let until = std::time::Instant::now() + d;
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = std::time::Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep(SLEEP_SLICE.min(until - now));
    }
}

/// The batch's `webhook-id`: a digest of its events' ids, so the same batch has the same id.
pub fn batch_id(events: &[DestinationEvent]) -> String {
    let mut h = Sha256::new();
    for e in events {
        h.update(e.id.as_bytes());
        h.update([0]);
    }
    format!("msg_{}", &hex::encode(h.finalize())[..32])
}

/// The request body: `{"type":"audience.events","destination":KEY,"events":[...]}`.
pub fn body(destination: &str, events: &[DestinationEvent]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "type": "audience.events",
        "destination": destination,
        "events": events,
    }))
    .expect("events serialise")
}
