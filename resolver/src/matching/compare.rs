//! Comparison levels: how well two normalised values of one field agree. Text is exact, close
//! or similar by Jaro-Winkler thresholds, else disagreeing; dates agree exactly, on year and
//! month, with day and month transposed, or not at all. A value missing on either side has no
//! level and contributes nothing to the match weight. First and last name typed into each
//! other's boxes are compared crosswise (see [`compare_records`]).

use super::field::{Field, Record};
use serde::{Deserialize, Serialize};
use std::fmt;

/// How two values agree. The names are the keys of the model file's per-level m and u.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Exact,
    /// Jaro-Winkler similarity at least the `close` threshold (a typo).
    Close,
    /// Jaro-Winkler similarity at least the `similar` threshold.
    Similar,
    /// Dates in the same year and month.
    YearMonth,
    /// Dates whose day and month are swapped (a US/European mix-up).
    DayMonthSwapped,
    Else,
}

impl Level {
    /// Every level, in declaration order (`level as usize` is the position).
    pub const ALL: [Level; 6] = [
        Level::Exact,
        Level::Close,
        Level::Similar,
        Level::YearMonth,
        Level::DayMonthSwapped,
        Level::Else,
    ];
    pub const TEXT: [Level; 4] = [Level::Exact, Level::Close, Level::Similar, Level::Else];
    pub const DATE: [Level; 4] = [
        Level::Exact,
        Level::YearMonth,
        Level::DayMonthSwapped,
        Level::Else,
    ];

    /// The levels a field can take.
    pub fn of(field: Field) -> &'static [Level; 4] {
        if field.is_date() {
            &Self::DATE
        } else {
            &Self::TEXT
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Exact => "exact",
            Level::Close => "close",
            Level::Similar => "similar",
            Level::YearMonth => "year_month",
            Level::DayMonthSwapped => "day_month_swapped",
            Level::Else => "else",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The levels at which two records agree, one per field present on both sides, in field order.
/// When first and last name agree better crosswise (one record has them swapped, as forms and
/// imports often do) than straight, the crosswise levels count for both name fields.
pub fn compare_records(ours: &Record, theirs: &Record, t: Thresholds) -> Vec<(Field, Level)> {
    let mut levels: Vec<(Field, Level)> = ours
        .iter()
        .filter_map(|(f, a)| Some((f, compare(f, a, theirs.get(f)?, t))))
        .collect();
    fn names(r: &Record) -> Option<(&str, &str)> {
        Some((r.get(Field::FirstName)?, r.get(Field::LastName)?))
    }
    if let (Some((f1, l1)), Some((f2, l2))) = (names(ours), names(theirs)) {
        let cross = (
            compare(Field::FirstName, f1, l2, t),
            compare(Field::LastName, l1, f2, t),
        );
        let worst = |a: Level, b: Level| a.max(b);
        let straight = levels
            .iter()
            .filter(|(f, _)| matches!(f, Field::FirstName | Field::LastName))
            .map(|(_, l)| *l)
            .fold(Level::Exact, worst);
        if worst(cross.0, cross.1) < straight {
            for (f, l) in &mut levels {
                match f {
                    Field::FirstName => *l = cross.0,
                    Field::LastName => *l = cross.1,
                    _ => {}
                }
            }
        }
    }
    levels
}

/// Jaro-Winkler thresholds of the text levels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub close: f64,
    pub similar: f64,
}

/// The level at which two normalised values of `field` agree.
pub fn compare(field: Field, a: &str, b: &str, t: Thresholds) -> Level {
    if a == b {
        return Level::Exact;
    }
    if field.is_date() {
        return compare_dates(a, b);
    }
    let similarity = super::jaro::jaro_winkler(a, b);
    if similarity >= t.close {
        Level::Close
    } else if similarity >= t.similar {
        Level::Similar
    } else {
        Level::Else
    }
}

fn date_parts(s: &str) -> Option<(&str, &str, &str)> {
    let mut it = s.splitn(3, '-');
    Some((it.next()?, it.next()?, it.next()?))
}

/// Dates normalised as `YYYY-MM-DD`.
fn compare_dates(a: &str, b: &str) -> Level {
    let (Some((ya, ma, da)), Some((yb, mb, db))) = (date_parts(a), date_parts(b)) else {
        return Level::Else;
    };
    if ya != yb {
        Level::Else
    } else if ma == db && da == mb {
        Level::DayMonthSwapped
    } else if ma == mb {
        Level::YearMonth
    } else {
        Level::Else
    }
}

#[cfg(test)]
mod tests {
    use super::super::field::Record;

    #[test]
    fn swapped_names_compare_crosswise() {
        let t = Thresholds {
            close: 0.92,
            similar: 0.8,
        };
        let rec = |first: &str, last: &str| {
            [(Field::FirstName, first), (Field::LastName, last)]
                .into_iter()
                .collect::<Record>()
        };
        let levels = compare_records(&rec("anthony", "beazley"), &rec("beazley", "anthony"), t);
        assert_eq!(
            levels,
            [
                (Field::FirstName, Level::Exact),
                (Field::LastName, Level::Exact)
            ]
        );
        let straight = compare_records(&rec("anthony", "beazley"), &rec("anthony", "beazly"), t);
        assert_eq!(
            straight,
            [
                (Field::FirstName, Level::Exact),
                (Field::LastName, Level::Close)
            ]
        );
        let strangers = compare_records(&rec("maria", "lopez"), &rec("james", "smith"), t);
        assert!(strangers.iter().all(|(_, l)| *l == Level::Else));
    }

    use super::*;

    const T: Thresholds = Thresholds {
        close: 0.92,
        similar: 0.8,
    };

    #[test]
    fn text_levels_follow_jaro_winkler_thresholds() {
        assert_eq!(
            compare(Field::LastName, "johnson", "johnson", T),
            Level::Exact
        );
        // One transposition in a long name: a typo.
        assert!(strsim::jaro_winkler("johnson", "jonhson") >= 0.92);
        assert_eq!(
            compare(Field::LastName, "johnson", "jonhson", T),
            Level::Close
        );
        let smyth = strsim::jaro_winkler("smith", "smyth");
        assert!((0.8..0.92).contains(&smyth), "{smyth}");
        assert_eq!(
            compare(Field::LastName, "smith", "smyth", T),
            Level::Similar
        );
        assert_eq!(compare(Field::LastName, "smith", "garcia", T), Level::Else);
        // The thresholds are the boundaries: lowering `close` promotes the pair.
        let loose = Thresholds {
            close: smyth,
            similar: 0.5,
        };
        assert_eq!(
            compare(Field::LastName, "smith", "smyth", loose),
            Level::Close
        );
    }

    #[test]
    fn date_levels_compare_parts() {
        let d = |a, b| compare(Field::BirthDate, a, b, T);
        assert_eq!(d("1984-03-07", "1984-03-07"), Level::Exact);
        assert_eq!(d("1984-03-07", "1984-07-03"), Level::DayMonthSwapped);
        assert_eq!(d("1984-03-07", "1984-03-17"), Level::YearMonth);
        assert_eq!(d("1984-03-07", "1985-03-07"), Level::Else);
        assert_eq!(d("1984-03-07", "1984-04-07"), Level::Else);
        // Dates are not compared by spelling: one digit apart is still another day.
        assert_eq!(d("1984-03-07", "1984-03-08"), Level::YearMonth);
    }
}
