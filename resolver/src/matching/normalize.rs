//! Normalising the text of comparison fields before they are compared or blocked on: lower
//! case, accents folded to their base letter, punctuation dropped, runs of spaces collapsed.
//! "José  O'Neil-Smith" and "jose oneil smith" compare equal. Dates are read as
//! year-month-day.

/// Appends `raw` to `out` as lower-case ASCII letters, digits and single spaces between words;
/// everything else folded or dropped. Without `spaces`, the words run together (postal codes:
/// "SW1A 1AA" and "sw1a1aa" agree).
pub fn text_into(raw: &str, out: &mut String, spaces: bool) {
    let start = out.len();
    let mut space = false;
    let mut push = |c: char| {
        if c.is_ascii_alphanumeric() {
            if space && spaces && out.len() > start {
                out.push(' ');
            }
            space = false;
            out.push(c);
        } else if c.is_whitespace() || c == '-' || c == '/' || c == ',' {
            // Separators between words stay one space: "Mary-Ann" and "Mary Ann" agree.
            space = true;
        } else if let Some(folded) = fold(c) {
            if space && spaces && out.len() > start {
                out.push(' ');
            }
            space = false;
            out.push_str(folded);
        }
        // Other punctuation (apostrophes, dots) vanishes: "O'Neil" is "oneil".
    };
    for c in raw.chars() {
        // Most names are ASCII: their lower case needs no Unicode table.
        if c.is_ascii() {
            push(c.to_ascii_lowercase());
        } else {
            c.to_lowercase().for_each(&mut push);
        }
    }
}

/// Appends only the digits of `raw` to `out` (phone numbers).
pub fn digits_into(raw: &str, out: &mut String) {
    out.extend(raw.chars().filter(char::is_ascii_digit));
}

/// A calendar date as (year, month, day), from `YYYY-MM-DD` (a time part after it is ignored).
pub fn date(raw: &str) -> Option<(u16, u8, u8)> {
    let raw = raw.trim();
    let head = raw.get(..10)?;
    let mut parts = head.split('-');
    let year: u16 = parts.next()?.parse().ok()?;
    let month: u8 = parts.next()?.parse().ok()?;
    let day: u8 = parts.next()?.parse().ok()?;
    ((1..=12).contains(&month) && (1..=31).contains(&day) && year >= 1000)
        .then_some((year, month, day))
}

/// The base letter(s) of an accented Latin letter (already lower case).
fn fold(c: char) -> Option<&'static str> {
    Some(match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => "a",
        'æ' => "ae",
        'ç' | 'ć' | 'ĉ' | 'č' => "c",
        'ď' | 'đ' | 'ð' => "d",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ė' | 'ę' | 'ě' => "e",
        'ĝ' | 'ğ' | 'ġ' | 'ģ' => "g",
        'ì' | 'í' | 'î' | 'ï' | 'ĩ' | 'ī' | 'į' | 'ı' => "i",
        'ķ' => "k",
        'ĺ' | 'ļ' | 'ľ' | 'ł' => "l",
        'ñ' | 'ń' | 'ņ' | 'ň' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ő' => "o",
        'œ' => "oe",
        'ŕ' | 'ř' => "r",
        'ś' | 'ş' | 'š' | 'ș' => "s",
        'ß' => "ss",
        'ţ' | 'ť' | 'ț' => "t",
        'þ' => "th",
        'ù' | 'ú' | 'û' | 'ü' | 'ũ' | 'ū' | 'ů' | 'ű' | 'ų' => "u",
        'ý' | 'ÿ' => "y",
        'ź' | 'ż' | 'ž' => "z",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(raw: &str) -> String {
        let mut out = String::new();
        text_into(raw, &mut out, true);
        out
    }

    fn compact(raw: &str) -> String {
        let mut out = String::new();
        text_into(raw, &mut out, false);
        out
    }

    fn digits(raw: &str) -> String {
        let mut out = String::new();
        digits_into(raw, &mut out);
        out
    }

    #[test]
    fn text_is_lower_case_without_accents_or_punctuation() {
        assert_eq!(text("  José  O'Neil-Smith "), "jose oneil smith");
        assert_eq!(text("MÜLLER"), "muller");
        assert_eq!(text("Straße 5, Apt. 3"), "strasse 5 apt 3");
        assert_eq!(text("!!!"), "");
        assert_eq!(compact("SW1A 1AA"), "sw1a1aa");
        assert_eq!(digits("+1 (415) 555-2671"), "14155552671");
        // Appended after what the buffer holds, with no space before its first word.
        let mut out = String::from("ab");
        text_into(" -Mary Ann", &mut out, true);
        text_into(" SW1A 1AA", &mut out, false);
        assert_eq!(out, "abmary annsw1a1aa");
    }

    #[test]
    fn dates_are_year_month_day() {
        assert_eq!(date("1984-03-07"), Some((1984, 3, 7)));
        assert_eq!(date("1984-03-07T00:00:00Z"), Some((1984, 3, 7)));
        assert_eq!(date("1984-13-07"), None);
        assert_eq!(date("07/03/1984"), None);
        assert_eq!(date(""), None);
    }
}
