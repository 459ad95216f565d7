//! Random values in the forms real sources produce: UUIDs, IDFAs and GAIDs, Salesforce and
//! HubSpot ids, ad click ids, names, emails with the variants people type, and phone numbers in
//! the formats forms accept.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

pub(super) type Rand = ChaCha8Rng;

const FIRST_NAMES: [&str; 40] = [
    "Maria", "James", "Aisha", "Wei", "Sofia", "Liam", "Noah", "Emma", "Olivia", "Mateo", "Yuki",
    "Priya", "Lucas", "Chloe", "Omar", "Hannah", "Diego", "Fatima", "Ethan", "Ava", "Jonas", "Lea",
    "Ravi", "Grace", "Mohammed", "Isabella", "Kenji", "Zoe", "Samuel", "Nora", "Elena", "David",
    "Amara", "Leo", "Ines", "Felix", "Maya", "Hugo", "Sara", "Tomas",
];

const LAST_NAMES: [&str; 40] = [
    "Garcia",
    "Smith",
    "Khan",
    "Zhang",
    "Rossi",
    "Murphy",
    "Johnson",
    "Brown",
    "Martin",
    "Lopez",
    "Tanaka",
    "Patel",
    "Silva",
    "Dubois",
    "Hassan",
    "Schmidt",
    "Fernandez",
    "Ali",
    "Walker",
    "Young",
    "Berg",
    "Novak",
    "Iyer",
    "Kim",
    "Rahman",
    "Costa",
    "Sato",
    "Cohen",
    "Okafor",
    "Larsen",
    "Popescu",
    "Miller",
    "Mensah",
    "Moreau",
    "Alves",
    "Weber",
    "Cruz",
    "Lambert",
    "Nilsson",
    "Horvat",
];

const FREEMAIL: [&str; 6] = [
    "gmail.com",
    "yahoo.com",
    "outlook.com",
    "icloud.com",
    "hotmail.com",
    "proton.me",
];

pub(super) const COMPANIES: [&str; 16] = [
    "Northwind",
    "Contoso",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Acme",
    "Stark",
    "Wayne",
    "Tyrell",
    "Soylent",
    "Vandelay",
    "Cyberdyne",
    "Aperture",
    "Oscorp",
    "Wonka",
];

/// NANP area codes in service; every exchange the generator makes is valid within them.
const AREA_CODES: [u16; 16] = [
    415, 212, 312, 617, 206, 512, 303, 404, 305, 213, 702, 612, 503, 214, 202, 646,
];

pub(super) fn pick<T: Copy>(rng: &mut Rand, items: &[T]) -> T {
    items[rng.gen_range(0..items.len())]
}

pub(super) fn hex(rng: &mut Rand, len: usize) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    (0..len)
        .map(|_| char::from(DIGITS[rng.gen_range(0..16)]))
        .collect()
}

fn alnum(rng: &mut Rand, len: usize, alphabet: &[u8]) -> String {
    (0..len)
        .map(|_| char::from(alphabet[rng.gen_range(0..alphabet.len())]))
        .collect()
}

/// A version-4 UUID, lower-case (`anonymousId`, GAID, `messageId`).
pub(super) fn uuid(rng: &mut Rand) -> String {
    let v: u128 = rng.gen();
    let v = (v & !(0xF << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let s = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &s[0..8],
        &s[8..12],
        &s[12..16],
        &s[16..20],
        &s[20..32]
    )
}

/// IDFA / IDFV: Apple prints them upper-case.
pub(super) fn apple_id(rng: &mut Rand) -> String {
    uuid(rng).to_ascii_uppercase()
}

pub(super) const ZERO_IDFA: &str = "00000000-0000-0000-0000-000000000000";

/// An AppsFlyer id: install epoch millis, a dash, 19 digits.
pub(super) fn appsflyer_id(rng: &mut Rand, install_ms: i64) -> String {
    format!(
        "{install_ms}-{}",
        rng.gen_range(1_000_000_000_000_000_000u64..10_000_000_000_000_000_000u64)
    )
}

/// A Salesforce 18-character id with the object's key prefix (`003` Contact, `00Q` Lead).
pub(super) fn salesforce_id(rng: &mut Rand, prefix: &str) -> String {
    const ALNUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let id15 = format!("{prefix}5g00000{}", alnum(rng, 5, ALNUM));
    crate::crm::salesforce_id18(&id15).into_owned()
}

/// An ad platform's click id for the URL parameter `param`.
pub(super) fn click_id(rng: &mut Rand, param: &str) -> String {
    const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    match param {
        "gclid" => format!("Cj0KCQjw{}", alnum(rng, 60, B64URL)),
        "fbclid" => format!("IwAR{}", alnum(rng, 55, B64URL)),
        "msclkid" => hex(rng, 32),
        _ => format!("E.C.P.{}", alnum(rng, 40, B64URL)),
    }
}

pub(super) fn first_name(rng: &mut Rand) -> &'static str {
    FIRST_NAMES[rng.gen_range(0..FIRST_NAMES.len())]
}

pub(super) fn last_name(rng: &mut Rand) -> &'static str {
    LAST_NAMES[rng.gen_range(0..LAST_NAMES.len())]
}

/// A personal address, unique to person `n` so that two generated people never share one.
pub(super) fn personal_email(rng: &mut Rand, first: &str, last: &str, n: usize) -> String {
    let domain = pick(rng, &FREEMAIL);
    let (f, l) = (first.to_ascii_lowercase(), last.to_ascii_lowercase());
    match rng.gen_range(0..3) {
        0 => format!("{f}.{l}{n}@{domain}"),
        1 => format!("{}{l}{n}@{domain}", &f[..1]),
        _ => format!("{f}{n}@{domain}"),
    }
}

/// A work address at `company`, unique to person `n`.
pub(super) fn work_email(first: &str, last: &str, company: &str, n: usize) -> String {
    format!(
        "{}.{}.{n}@{}.example",
        first.to_ascii_lowercase(),
        last.to_ascii_lowercase(),
        company.to_ascii_lowercase()
    )
}

/// How a person typed their address into one particular form: the same address after
/// trimming and lower-casing, which is all normalisation undoes.
pub(super) fn email_variant(rng: &mut Rand, email: &str) -> String {
    match rng.gen_range(0..10) {
        0..=5 => email.to_string(),
        6 => capitalised(email),
        7 => email.to_ascii_uppercase(),
        8 => format!(" {email}"),
        _ => format!("{} ", capitalised(email)),
    }
}

fn capitalised(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        out.push(if start { c.to_ascii_uppercase() } else { c });
        start = matches!(c, '.' | '@');
    }
    out
}

/// A valid US number, unique to person `n` (exchange and line are derived from `n`), as ten
/// digits.
pub(super) fn phone_digits(rng: &mut Rand, n: usize) -> String {
    let area = pick(rng, &AREA_CODES);
    // Exchanges 200-999 without the N11 service codes: 8 hundreds of 99 each.
    let k = (n / 10_000) % 792;
    let rest = k % 99;
    let exchange = (2 + k / 99) * 100 + if rest >= 11 { rest + 1 } else { rest };
    format!("{area}{exchange:03}{:04}", n % 10_000)
}

/// Ten digits in one of the ways people and systems write them.
pub(super) fn phone_format(rng: &mut Rand, digits: &str) -> String {
    let (a, e, l) = (&digits[0..3], &digits[3..6], &digits[6..10]);
    match rng.gen_range(0..5) {
        0 => format!("({a}) {e}-{l}"),
        1 => format!("+1 {a}-{e}-{l}"),
        2 => digits.to_string(),
        3 => format!("{a}.{e}.{l}"),
        _ => format!("+1{digits}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cdp_proto::{normalize, IdentifierKind, NormalizeOptions};
    use rand::SeedableRng;

    #[test]
    fn generated_contact_values_normalise_and_variants_agree() {
        let mut rng = Rand::seed_from_u64(7);
        let opts = NormalizeOptions::default();
        for n in (0..7_920_000)
            .step_by(10_007)
            .chain([9_999, 10_000, 110_000, 7_919_999])
        {
            let digits = phone_digits(&mut rng, n);
            let canonical = normalize(IdentifierKind::PhoneSha256, &digits, &opts).unwrap();
            for _ in 0..3 {
                let written = phone_format(&mut rng, &digits);
                let id = normalize(IdentifierKind::PhoneSha256, &written, &opts);
                assert_eq!(id.as_ref(), Ok(&canonical), "{written}");
            }
            let email = personal_email(&mut rng, "Maria", "Garcia", n);
            let canonical = normalize(IdentifierKind::EmailSha256, &email, &opts).unwrap();
            for _ in 0..3 {
                let written = email_variant(&mut rng, &email);
                assert_eq!(
                    normalize(IdentifierKind::EmailSha256, &written, &opts),
                    Ok(canonical.clone())
                );
            }
        }
    }

    #[test]
    fn ids_have_their_documented_shapes() {
        let mut rng = Rand::seed_from_u64(1);
        let u = uuid(&mut rng);
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        let sf = salesforce_id(&mut rng, "003");
        assert_eq!(sf.len(), 18);
        assert!(sf.starts_with("0035g00000"));
        assert!(click_id(&mut rng, "gclid").starts_with("Cj0KCQjw"));
    }
}

const STREETS: [&str; 20] = [
    "Oak Street",
    "Maple Avenue",
    "Cedar Lane",
    "Elm Street",
    "Park Road",
    "Hillside Drive",
    "Lake View Road",
    "Mill Lane",
    "Church Street",
    "Station Road",
    "Willow Way",
    "River Road",
    "Birch Court",
    "Highland Avenue",
    "Sunset Boulevard",
    "Forest Drive",
    "Meadow Lane",
    "Harbor Street",
    "King Street",
    "Orchard Road",
];

/// Cities with the first three digits of their postal codes.
const CITIES: [(&str, &str); 16] = [
    ("Springfield", "627"),
    ("Portland", "972"),
    ("Austin", "787"),
    ("Madison", "537"),
    ("Denver", "802"),
    ("Raleigh", "276"),
    ("Boise", "837"),
    ("Tucson", "857"),
    ("Albany", "122"),
    ("Columbus", "432"),
    ("Richmond", "232"),
    ("Omaha", "681"),
    ("Reno", "895"),
    ("Savannah", "314"),
    ("Dayton", "454"),
    ("Fresno", "937"),
];

/// A postal address as a CRM holds it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Address {
    pub(super) street: String,
    pub(super) city: &'static str,
    pub(super) postal_code: String,
}

pub(super) fn address(rng: &mut Rand) -> Address {
    let (city, prefix) = pick(rng, &CITIES);
    Address {
        street: format!("{} {}", rng.gen_range(1..900), pick(rng, &STREETS)),
        city,
        postal_code: format!("{prefix}{:02}", rng.gen_range(0..100)),
    }
}

/// A date of birth (ISO 8601) of an adult.
pub(super) fn birth_date(rng: &mut Rand) -> String {
    let year = rng.gen_range(1950..2006);
    let month = rng.gen_range(1..=12);
    let day = rng.gen_range(1..=28);
    format!("{year:04}-{month:02}-{day:02}")
}

/// The short form of a first name people give on paper forms, where it has a common one.
pub(super) fn nickname(first: &str) -> Option<&'static str> {
    Some(match first {
        "James" => "Jim",
        "Samuel" => "Sam",
        "David" => "Dave",
        "Isabella" => "Bella",
        "Elena" => "Lena",
        "Mohammed" => "Mo",
        "Olivia" => "Liv",
        "Tomas" => "Tom",
        "Mateo" => "Teo",
        "Hannah" => "Annie",
        "Sofia" => "Sophie",
        "Samantha" => "Sam",
        "Gabriel" => "Gabe",
        "Nora" => "Norah",
        "Jonas" => "Jon",
        _ => return None,
    })
}
