//! How a person looks in a record somebody else typed: a list import, a trade-show scan, a
//! second CRM. Names get nicknames and typos or trade places, people move house, dates of birth
//! go missing or get day and month swapped, the email is an old one or absent. These records
//! share no identifier with the person's other records, so only probabilistic matching on
//! name, date of birth and address can join them.

use super::person::Person;
use super::values::{self, Address, Rand};
use rand::Rng;

/// The person's details as the other record holds them.
#[derive(Debug, Clone)]
pub(super) struct Noisy {
    pub(super) first: String,
    pub(super) last: String,
    pub(super) birth_date: Option<String>,
    pub(super) address: Address,
    /// An address only this record has (an old one), or none.
    pub(super) email: Option<String>,
}

pub(super) fn typed_by_someone_else(rng: &mut Rand, p: &Person) -> Noisy {
    let mut first = p.first.to_string();
    if let Some(short) = values::nickname(p.first).filter(|_| rng.gen_bool(0.3)) {
        first = short.to_string();
    } else if rng.gen_bool(0.15) {
        first = typo(rng, &first);
    }
    let mut last = p.last.to_string();
    if rng.gen_bool(0.25) {
        last = typo(rng, &last);
    }
    if rng.gen_bool(0.05) {
        std::mem::swap(&mut first, &mut last);
    }
    let birth_date = match rng.gen_range(0..20) {
        0 | 1 => None,
        2 => Some(day_month_swapped(&p.birth_date)),
        _ => Some(p.birth_date.clone()),
    };
    let address = if rng.gen_bool(0.3) {
        values::address(rng)
    } else {
        let mut a = p.address.clone();
        if rng.gen_bool(0.2) {
            a.street = typo(rng, &a.street);
        }
        a
    };
    // Unique to this record: index offset past every person's own addresses.
    let email = rng
        .gen_bool(0.4)
        .then(|| values::personal_email(rng, p.first, p.last, p.index + 50_000_000));
    Noisy {
        first,
        last,
        birth_date,
        address,
        email,
    }
}

/// One keying slip after the first character: a substitution, a deletion or two neighbours
/// swapped.
pub(super) fn typo(rng: &mut Rand, s: &str) -> String {
    let mut chars: Vec<char> = s.chars().collect();
    if chars.len() < 3 {
        return s.to_string();
    }
    let i = rng.gen_range(1..chars.len() - 1);
    match rng.gen_range(0..3) {
        0 => chars[i] = (b'a' + rng.gen_range(0..26u8)) as char,
        1 => {
            chars.remove(i);
        }
        _ => chars.swap(i, i + 1),
    }
    chars.into_iter().collect()
}

/// `YYYY-MM-DD` with day and month exchanged, where the day can be a month.
fn day_month_swapped(date: &str) -> String {
    let (y, m, d) = (&date[0..4], &date[5..7], &date[8..10]);
    if d <= "12" {
        format!("{y}-{d}-{m}")
    } else {
        date.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn typos_change_one_place_and_keep_the_first_letter() {
        let mut rng = Rand::seed_from_u64(7);
        for _ in 0..200 {
            let t = typo(&mut rng, "Fernandez");
            assert!(t.starts_with('F'));
            assert!(t.len() == 9 || t.len() == 8, "{t}");
        }
    }

    #[test]
    fn day_and_month_trade_places_only_when_both_are_months() {
        assert_eq!(day_month_swapped("1980-03-07"), "1980-07-03");
        assert_eq!(day_month_swapped("1980-03-27"), "1980-03-27");
    }
}
