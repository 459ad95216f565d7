//! A realistic raw workload with its ground truth, for `cdp generate`, the demo and the accuracy
//! benchmark.
//!
//! [`generate`] writes, into one directory, one raw payload per line in exactly the shapes the
//! parsers accept: `web.jsonl` (Segment analytics.js messages, some sessions as `batch`
//! envelopes), `app.jsonl` (Segment mobile messages, Firebase/GA4 rows for some Android installs),
//! `crm.jsonl` (Salesforce Contacts and Leads, HubSpot contacts, several versions of a record),
//! `media.jsonl` (AppsFlyer and Adjust postbacks, ad-click logs), and `truth.csv`
//! (`source,record_id,person_id`), where `record_id` is the `Signal.event_id` the parser emits
//! for that record (one row per message of a batch envelope).
//!
//! The people: 1-3 browsers (anonymous ids), 0-2 app installs, 1-2 email addresses typed with
//! varying case and spaces, a phone for 40% written in several formats, a sign-up (`user_id`) for
//! ~60%, CRM records for ~50% (some as a duplicate Lead and Contact), MMP postbacks for app
//! installs, click ids on ~25% of landing pages (70% of them also in the ad server's click log).
//! About 20-40 records per person over the 30 days before "now".
//!
//! Noise a resolver must survive: `"null"` user ids, `test@test.com` at sign-up, all-zero IDFAs and
//! users who turned ad tracking off, unfilled MMP macros (`{idfa}`), a few app installs shared by
//! 2-3 logged-in people (office and family devices; the truth keeps them apart, so the resolver
//! must refuse those merges), ~0.1% of lines cut short (invalid JSON, for the DLQ; they have
//! no truth rows), and for a fifth of the Salesforce people a list-import Contact with the PII
//! noise of a record someone else typed (nicknames, typos, swapped names, moved house, an old or
//! no email, a missing or day/month-swapped birth date) that only probabilistic matching joins.
//!
//! Some of it is unresolvable by design, as in real data: an anonymous visitor's second browser,
//! an app install that never logs in.
//!
//! Determinism: the output is a function of `(profiles, seed, now)` only. [`generate`] uses the
//! fixed [`default_now`] so that a seed always gives the same bytes; [`generate_with`] takes
//! another "now" (e.g. the wall clock, so that recency cohorts match in a live demo). Lines are
//! in time order within each block of [`PEOPLE_PER_BLOCK`] people, which bounds memory.

mod app;
mod crm;
mod media;
mod noise;
mod person;
mod segment;
mod values;
mod web;

use cdp_proto::{Source, Timestamp};
use person::Person;
use rand::{Rng, SeedableRng};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use values::Rand;

/// People generated, and their lines sorted, together.
pub const PEOPLE_PER_BLOCK: usize = 2_000;

/// Share of lines cut short into invalid JSON.
const INVALID_JSON_RATE: f64 = 0.001;

/// The "now" of [`generate`]: 2025-01-01T00:00:00Z.
pub fn default_now() -> Timestamp {
    cdp_proto::time::from_millis(1_735_689_600_000)
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    pub profiles: usize,
    pub seed: u64,
    /// Events fall in the 30 days before this instant.
    pub now: Timestamp,
}

/// What was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadSummary {
    pub profiles: usize,
    /// Lines per file.
    pub web: u64,
    pub app: u64,
    pub crm: u64,
    pub media: u64,
    /// Lines (of all files) written as invalid JSON.
    pub invalid: u64,
    /// Rows of `truth.csv`: one per signal the valid lines yield.
    pub truth_rows: u64,
}

impl WorkloadSummary {
    /// Lines in all four files.
    pub fn records(&self) -> u64 {
        self.web + self.app + self.crm + self.media
    }

    pub fn for_source(&self, source: Source) -> u64 {
        match source {
            Source::Web => self.web,
            Source::App => self.app,
            Source::Crm => self.crm,
            Source::Media => self.media,
        }
    }
}

/// The file holding `source`'s lines.
pub fn file_name(source: Source) -> &'static str {
    match source {
        Source::Web => "web.jsonl",
        Source::App => "app.jsonl",
        Source::Crm => "crm.jsonl",
        Source::Media => "media.jsonl",
    }
}

pub const TRUTH_FILE: &str = "truth.csv";

/// Writes the workload of `profiles` people for `seed` into `out_dir` (created if needed), with
/// "now" = [`default_now`].
pub fn generate(out_dir: &Path, profiles: usize, seed: u64) -> std::io::Result<WorkloadSummary> {
    generate_with(
        out_dir,
        &WorkloadOptions {
            profiles,
            seed,
            now: default_now(),
        },
    )
}

/// Writes the workload described by `options` into `out_dir` (created if needed).
pub fn generate_with(
    out_dir: &Path,
    options: &WorkloadOptions,
) -> std::io::Result<WorkloadSummary> {
    std::fs::create_dir_all(out_dir)?;
    let mut files = Files::create(out_dir)?;
    let mut rng = Rand::seed_from_u64(options.seed);
    let now_ms = options.now.timestamp_millis();
    let mut summary = WorkloadSummary {
        profiles: options.profiles,
        ..WorkloadSummary::default()
    };
    let mut start = 0;
    while start < options.profiles {
        let end = (start + PEOPLE_PER_BLOCK).min(options.profiles);
        let people: Vec<Person> = (start..end)
            .map(|i| Person::sample(&mut rng, i, now_ms))
            .collect();
        let shared = person::shared_devices(&mut rng, &people, now_ms);
        let mut out = Lines::default();
        for p in &people {
            web::emit(&mut rng, p, now_ms, &mut out);
            app::emit(&mut rng, p, now_ms, &mut out);
            crm::emit(&mut rng, p, now_ms, &mut out);
        }
        for device in &shared {
            app::emit_shared(&mut rng, device, &people, now_ms, &mut out);
        }
        out.write(&mut rng, &mut files, &mut summary)?;
        start = end;
    }
    files.finish()?;
    Ok(summary)
}

/// One line of a source file and the truth rows it stands for.
struct Line {
    time_ms: i64,
    source: Source,
    text: String,
    /// `(record_id, person index)` per signal of the line.
    truth: Vec<(String, usize)>,
}

/// The lines of one block of people, written in time order.
#[derive(Default)]
pub(crate) struct Lines {
    lines: Vec<Line>,
}

impl Lines {
    /// Adds a line of `source` at `time_ms` whose signals are `truth`.
    fn push(&mut self, source: Source, time_ms: i64, text: String, truth: Vec<(String, usize)>) {
        self.lines.push(Line {
            time_ms,
            source,
            text,
            truth,
        });
    }

    fn write(
        mut self,
        rng: &mut Rand,
        files: &mut Files,
        summary: &mut WorkloadSummary,
    ) -> std::io::Result<()> {
        // Stable sort: lines of one instant stay in the order they were made (install before
        // its first event).
        self.lines.sort_by_key(|l| l.time_ms);
        for line in self.lines {
            let mut text = line.text;
            let valid = !rng.gen_bool(INVALID_JSON_RATE);
            if !valid {
                // A line cut before its closing brace is never valid JSON.
                let cut = rng.gen_range(1..text.len().max(2));
                text.truncate(floor_char_boundary(&text, cut));
                summary.invalid += 1;
            }
            let file = files.for_source(line.source);
            file.write_all(text.as_bytes())?;
            file.write_all(b"\n")?;
            match line.source {
                Source::Web => summary.web += 1,
                Source::App => summary.app += 1,
                Source::Crm => summary.crm += 1,
                Source::Media => summary.media += 1,
            }
            if valid {
                for (record_id, person) in &line.truth {
                    writeln!(
                        files.truth,
                        "{},{},{}",
                        line.source.as_str(),
                        csv_field(record_id),
                        person::person_id(*person)
                    )?;
                    summary.truth_rows += 1;
                }
            }
        }
        Ok(())
    }
}

struct Files {
    web: BufWriter<File>,
    app: BufWriter<File>,
    crm: BufWriter<File>,
    media: BufWriter<File>,
    truth: BufWriter<File>,
}

impl Files {
    fn create(dir: &Path) -> std::io::Result<Self> {
        let open = |name: &str| File::create(dir.join(name)).map(BufWriter::new);
        let mut truth = open(TRUTH_FILE)?;
        truth.write_all(b"source,record_id,person_id\n")?;
        Ok(Self {
            web: open(file_name(Source::Web))?,
            app: open(file_name(Source::App))?,
            crm: open(file_name(Source::Crm))?,
            media: open(file_name(Source::Media))?,
            truth,
        })
    }

    fn for_source(&mut self, source: Source) -> &mut BufWriter<File> {
        match source {
            Source::Web => &mut self.web,
            Source::App => &mut self.app,
            Source::Crm => &mut self.crm,
            Source::Media => &mut self.media,
        }
    }

    fn finish(mut self) -> std::io::Result<()> {
        for f in [
            &mut self.web,
            &mut self.app,
            &mut self.crm,
            &mut self.media,
            &mut self.truth,
        ] {
            f.flush()?;
        }
        Ok(())
    }
}

/// Quotes a CSV field when it needs it (event names inside MMP event ids may hold commas).
fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        std::borrow::Cow::Owned(format!("\"{}\"", s.replace('"', "\"\"")))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// `n` instants in `[from_ms, to_ms)`, sorted, each at least `gap_ms` after the one before (later
/// instants are pushed back when needed, so the gap always holds).
pub(crate) fn schedule(
    rng: &mut Rand,
    n: usize,
    from_ms: i64,
    to_ms: i64,
    gap_ms: i64,
) -> Vec<i64> {
    let to_ms = to_ms.max(from_ms + 1);
    let mut times: Vec<i64> = (0..n).map(|_| rng.gen_range(from_ms..to_ms)).collect();
    times.sort_unstable();
    for i in 1..times.len() {
        if times[i] < times[i - 1] + gap_ms {
            times[i] = times[i - 1] + gap_ms;
        }
    }
    times
}

/// RFC 3339 with milliseconds, as Segment and HubSpot write times.
pub(crate) fn rfc3339(ms: i64) -> String {
    cdp_proto::time::from_millis(ms).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
