//! The query string of a landing-page URL: where ad platforms put their click ids and marketers
//! put UTM parameters. Only the query is read; the rest of the URL is not interpreted.

use std::borrow::Cow;

/// Query parameters that carry an ad platform's click id. Their values are opaque, case-sensitive
/// tokens: they are kept byte for byte.
pub(crate) const CLICK_ID_PARAMS: [&str; 6] =
    ["gclid", "gbraid", "wbraid", "fbclid", "ttclid", "msclkid"];

/// Campaign parameters copied into event properties under the same names.
pub(crate) const UTM_PARAMS: [&str; 5] = [
    "utm_source",
    "utm_medium",
    "utm_campaign",
    "utm_term",
    "utm_content",
];

/// The `(name, value)` pairs of the URL's query, percent-decoded, in order. Pairs without `=`
/// have an empty value. Names are compared by callers case-insensitively.
pub(crate) fn pairs(url: &str) -> impl Iterator<Item = (Cow<'_, str>, Cow<'_, str>)> {
    let query = url
        .split_once('?')
        .map(|(_, q)| q.split_once('#').map_or(q, |(q, _)| q))
        .unwrap_or("");
    query.split('&').filter(|p| !p.is_empty()).map(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        (decode(k), decode(v))
    })
}

/// Percent-decodes one query component (`+` is a space). Malformed escapes are kept as written;
/// bytes that do not form UTF-8 are replaced, so decoding never fails.
pub(crate) fn decode(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => match (
                bytes.get(i + 1).and_then(hex),
                bytes.get(i + 2).and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn hex(b: &u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_query_and_ignores_fragment() {
        let url =
            "https://shop.example/landing?utm_source=google&gclid=Cj0KCQ%2DAbC&flag#gclid=nope";
        let got: Vec<(String, String)> = pairs(url)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("utm_source".into(), "google".into()),
                ("gclid".into(), "Cj0KCQ-AbC".into()),
                ("flag".into(), String::new()),
            ]
        );
    }

    #[test]
    fn decode_handles_plus_and_bad_escapes() {
        assert_eq!(decode("spring+sale%21"), "spring sale!");
        assert_eq!(decode("100%"), "100%");
        assert_eq!(decode("%zz%4"), "%zz%4");
        assert_eq!(decode("%FF"), "\u{FFFD}");
        assert_eq!(pairs("no-query").count(), 0);
    }
}
