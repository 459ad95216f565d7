//! The people of the workload: who they are, which browsers and devices they use, whether and
//! when they sign up, whether the CRM knows them. Everything the emitters need to stay
//! consistent across sources is decided here, before any line is written.

use super::schedule;
use super::values::{self, pick, Rand, COMPANIES, ZERO_IDFA};
use rand::seq::SliceRandom;
use rand::Rng;

const DAY_MS: i64 = 86_400_000;
const HOUR_MS: i64 = 3_600_000;

/// The truth's id of person `index`.
pub(super) fn person_id(index: usize) -> String {
    format!("p{index:07}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Platform {
    Ios,
    Android,
}

#[derive(Debug, Clone)]
pub(super) enum Mmp {
    AppsFlyer { appsflyer_id: String },
    Adjust { adid: String },
}

/// One app install.
#[derive(Debug, Clone)]
pub(super) struct Device {
    pub(super) platform: Platform,
    /// IDFA or GAID; all zeros for iOS users who did not allow tracking.
    pub(super) ad_id: String,
    /// `adTrackingEnabled` as the SDK reports it.
    pub(super) tracking: bool,
    /// IDFV or Android id.
    pub(super) vendor_id: String,
    /// The install's Segment `anonymousId` (or Firebase app instance id).
    pub(super) anonymous_id: String,
    pub(super) mmp: Mmp,
    /// Reports through Firebase (GA4 rows) instead of Segment.
    pub(super) ga4: bool,
    pub(super) installed_ms: i64,
}

/// What the CRM holds about a person.
#[derive(Debug, Clone)]
pub(super) enum CrmPlan {
    Salesforce {
        contact: Option<String>,
        lead: Option<String>,
        /// The lead was converted into the contact (`ConvertedContactId`).
        converted: bool,
    },
    HubSpot {
        id: u64,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Person {
    pub(super) index: usize,
    pub(super) first: &'static str,
    pub(super) last: &'static str,
    pub(super) company: &'static str,
    /// Canonical addresses; the first is the one given at sign-up or subscription.
    pub(super) emails: Vec<String>,
    /// Ten digits.
    pub(super) phone: Option<String>,
    /// Web anonymous ids, one per browser.
    pub(super) cookies: Vec<String>,
    /// The ad server's cookie for this person's main browser.
    pub(super) ad_cookie: String,
    pub(super) devices: Vec<Device>,
    pub(super) user_id: Option<String>,
    /// Start times of web sessions.
    pub(super) sessions: Vec<i64>,
    /// Index in `sessions` of the session where they sign up, or subscribe to the newsletter.
    pub(super) convert_session: Option<usize>,
    /// When they signed up (or subscribed).
    pub(super) converted_ms: Option<i64>,
    pub(super) crm: Option<CrmPlan>,
    /// Typed `test@test.com` at sign-up, and the real address later.
    pub(super) test_email_at_signup: bool,
    pub(super) buys: bool,
    /// Date of birth (ISO 8601) and postal address: what CRM records hold besides contact details.
    pub(super) birth_date: String,
    pub(super) address: values::Address,
    /// The Salesforce id of a second Contact from a list import, typed by someone else (see
    /// `noise`): the duplicate only probabilistic matching can join.
    pub(super) list_import: Option<String>,
}

impl Person {
    pub(super) fn sample(rng: &mut Rand, index: usize, now_ms: i64) -> Person {
        let first = values::first_name(rng);
        let last = values::last_name(rng);
        let company = pick(rng, &COMPANIES);
        let signs_up = rng.gen_bool(0.6);
        let subscribes = !signs_up && rng.gen_bool(0.3);
        let known = signs_up || subscribes;

        let mut emails = vec![values::personal_email(rng, first, last, index)];
        if known && rng.gen_bool(0.35) {
            emails.push(values::work_email(first, last, company, index));
        }
        let phone = rng.gen_bool(0.4).then(|| values::phone_digits(rng, index));
        // Only people who log in use several browsers in a way anyone could connect.
        let browsers = if signs_up { rng.gen_range(1..=3) } else { 1 };
        let cookies = (0..browsers).map(|_| values::uuid(rng)).collect();
        let ad_cookie = format!("ck.{}", values::hex(rng, 24));

        let first_seen = now_ms - rng.gen_range(DAY_MS..30 * DAY_MS);
        let session_count = if known {
            rng.gen_range(2..=6)
        } else {
            rng.gen_range(1..=3)
        };
        let sessions = schedule(
            rng,
            session_count,
            first_seen,
            now_ms - HOUR_MS,
            2 * HOUR_MS,
        );
        let convert_session = known.then(|| rng.gen_range(0..sessions.len().min(3)));
        let converted_ms = convert_session.map(|i| sessions[i] + rng.gen_range(60_000..600_000));

        let device_share = if signs_up { 0.6 } else { 0.1 };
        let device_count = if rng.gen_bool(device_share) {
            if rng.gen_bool(0.25) {
                2
            } else {
                1
            }
        } else {
            0
        };
        let devices = (0..device_count)
            .map(|_| {
                let installed =
                    rng.gen_range(first_seen..(now_ms - DAY_MS / 2).max(first_seen + 1));
                Device::sample(rng, installed)
            })
            .collect();

        let user_id = signs_up.then(|| format!("usr_{}", values::hex(rng, 16)));
        let crm = if signs_up && rng.gen_bool(0.7) || subscribes {
            Some(CrmPlan::sample(rng, index))
        } else {
            None
        };
        let birth_date = values::birth_date(rng);
        let address = values::address(rng);
        let list_import = match crm {
            Some(CrmPlan::Salesforce { .. }) if rng.gen_bool(0.2) => {
                Some(values::salesforce_id(rng, "003"))
            }
            _ => None,
        };
        Person {
            index,
            first,
            last,
            company,
            emails,
            phone,
            cookies,
            ad_cookie,
            devices,
            user_id,
            sessions,
            convert_session,
            converted_ms,
            crm,
            test_email_at_signup: signs_up && rng.gen_bool(0.02),
            buys: signs_up && rng.gen_bool(0.4),
            birth_date,
            address,
            list_import,
        }
    }

    /// `true` when the person has signed up by `ms`.
    pub(super) fn logged_in_by(&self, ms: i64) -> bool {
        self.user_id.is_some() && self.converted_ms.is_some_and(|t| t <= ms)
    }
}

impl Device {
    pub(super) fn sample(rng: &mut Rand, installed_ms: i64) -> Device {
        let platform = if rng.gen_bool(0.55) {
            Platform::Ios
        } else {
            Platform::Android
        };
        let (ad_id, tracking, vendor_id) = match platform {
            Platform::Ios => {
                let roll: f64 = rng.gen();
                // Since ATT most iOS users decline tracking: the SDK reports zeros.
                let (ad_id, tracking) = if roll < 0.3 {
                    (ZERO_IDFA.to_string(), false)
                } else if roll < 0.33 {
                    (ZERO_IDFA.to_string(), true)
                } else {
                    (values::apple_id(rng), true)
                };
                (ad_id, tracking, values::apple_id(rng))
            }
            Platform::Android => {
                let tracking = !rng.gen_bool(0.05);
                (values::uuid(rng), tracking, values::hex(rng, 16))
            }
        };
        let mmp = if rng.gen_bool(0.75) {
            Mmp::AppsFlyer {
                appsflyer_id: values::appsflyer_id(rng, installed_ms),
            }
        } else {
            Mmp::Adjust {
                adid: values::hex(rng, 32),
            }
        };
        let ga4 = platform == Platform::Android && rng.gen_bool(0.15);
        Device {
            platform,
            ad_id,
            tracking,
            vendor_id,
            anonymous_id: values::uuid(rng),
            mmp,
            ga4,
            installed_ms,
        }
    }
}

impl CrmPlan {
    fn sample(rng: &mut Rand, index: usize) -> CrmPlan {
        if rng.gen_bool(0.6) {
            let roll: f64 = rng.gen();
            let (contact, lead) = if roll < 0.15 {
                // The duplicate every CRM has: a Lead and a Contact for one person.
                (true, true)
            } else if roll < 0.7 {
                (true, false)
            } else {
                (false, true)
            };
            CrmPlan::Salesforce {
                contact: contact.then(|| values::salesforce_id(rng, "003")),
                lead: lead.then(|| values::salesforce_id(rng, "00Q")),
                converted: contact && lead && rng.gen_bool(0.5),
            }
        } else {
            CrmPlan::HubSpot {
                id: 51_000 + index as u64,
            }
        }
    }
}

/// An app install shared by 2-3 people who each log in on it (an office tablet, a family phone).
pub(super) struct SharedDevice {
    pub(super) device: Device,
    /// Indexes into the block's people.
    pub(super) members: Vec<usize>,
}

/// Picks shared installs among the block's people who sign up: about 1 in 60 of them share one.
pub(super) fn shared_devices(rng: &mut Rand, people: &[Person], now_ms: i64) -> Vec<SharedDevice> {
    let mut candidates: Vec<usize> = (0..people.len())
        .filter(|&i| {
            people[i]
                .converted_ms
                .is_some_and(|t| t < now_ms - 2 * DAY_MS)
                && people[i].user_id.is_some()
        })
        .collect();
    candidates.shuffle(rng);
    let groups = candidates.len() / 150;
    let mut out = Vec::with_capacity(groups);
    let mut rest = candidates.as_slice();
    for _ in 0..groups {
        let size = rng.gen_range(2..=3).min(rest.len());
        if size < 2 {
            break;
        }
        let (members, tail) = rest.split_at(size);
        rest = tail;
        let first_signup = members
            .iter()
            .filter_map(|&i| people[i].converted_ms)
            .min()
            .unwrap_or(now_ms - 2 * DAY_MS);
        let installed = rng.gen_range(first_signup..(now_ms - DAY_MS).max(first_signup + 1));
        out.push(SharedDevice {
            device: Device::sample(rng, installed),
            members: members.to_vec(),
        });
    }
    out
}
