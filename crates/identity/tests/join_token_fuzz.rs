//! Join-token parsing at scale: arbitrary text and mutations of valid tokens never panic, are
//! refused with a reason that names the expected form, and are accepted exactly when a reference
//! written differently (by byte positions) accepts them; valid tokens round-trip.
//!
//! A few seconds in CI; for a longer run, set `PROPTEST_CASES` (cases per property), e.g.
//! `PROPTEST_CASES=1000000 cargo nextest run -p meridian-identity --test join_token_fuzz`.

use meridian_identity::enroll::JoinToken;
use proptest::prelude::*;

/// `mrdjoin_` + 32 hex digits + `_` + 64 hex digits.
const LEN: usize = 8 + 32 + 1 + 64;

/// The reference: the canonical (lower-case) token `text` is, if it is one.
fn reference(text: &str) -> Option<String> {
    let t = text.trim().as_bytes();
    let hex = |range: &[u8]| range.iter().all(u8::is_ascii_hexdigit);
    let valid = t.len() == LEN
        && t.starts_with(b"mrdjoin_")
        && hex(&t[8..40])
        && t[40] == b'_'
        && hex(&t[41..]);
    valid.then(|| String::from_utf8(t.to_ascii_lowercase()).unwrap())
}

/// Parses `text` and checks the outcome against the reference, and what each outcome promises.
fn check(text: &str) -> Result<(), TestCaseError> {
    match (JoinToken::parse(text), reference(text)) {
        (Ok(token), Some(canonical)) => {
            prop_assert_eq!(token.as_str(), canonical.as_str());
            prop_assert_eq!(token.fingerprint(), &canonical[8..40]);
            let again = JoinToken::parse(token.as_str());
            prop_assert!(again.is_ok(), "{:?}", again);
            let again = again.unwrap();
            prop_assert_eq!(&again, &token);
            prop_assert_eq!(again.digest(), token.digest());
            // Its Debug form never shows the secret.
            let debug = format!("{token:?}");
            prop_assert!(!debug.contains(&canonical[41..]), "{}", debug);
        }
        (Err(e), None) => {
            let message = e.to_string();
            prop_assert!(message.starts_with("not a join token: "), "{}", message);
            prop_assert!(message.contains("mrdjoin_<32 hex digits>_<64 hex digits>"));
        }
        (outcome, expected) => {
            prop_assert!(
                false,
                "{text:?}: parsed {outcome:?}, reference {expected:?}"
            );
        }
    }
    Ok(())
}

/// `bytes` as hex digits, upper case where `upper` has the digit's bit set.
fn hex_in_mixed_case(bytes: &[u8], upper: u128) -> String {
    hex::encode(bytes)
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if upper >> (i % 128) & 1 == 1 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

/// Whitespace a token may be pasted with.
fn blank() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec!["", "", " ", "\n", "\t ", "\r\n"])
}

/// A valid token with hex digits in either case and whitespace around it (built from bytes,
/// not from a regular expression, so that many cases take little time).
fn valid() -> impl Strategy<Value = String> {
    (
        any::<[u8; 16]>(),
        any::<[u8; 32]>(),
        any::<u128>(),
        blank(),
        blank(),
    )
        .prop_map(|(fingerprint, secret, upper, before, after)| {
            let fingerprint = hex_in_mixed_case(&fingerprint, upper);
            let secret = hex_in_mixed_case(&secret, upper.rotate_left(32));
            format!("{before}mrdjoin_{fingerprint}_{secret}{after}")
        })
}

/// One edit of a token's text.
#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, char),
    Replace(usize, char),
    Remove(usize),
    Truncate(usize),
    Repeat(usize, usize),
}

/// Characters that make near misses likely, and any character at all.
fn character() -> impl Strategy<Value = char> {
    prop_oneof![
        prop::sample::select(vec![
            '_', '0', 'f', 'F', 'g', 'M', ' ', '\n', '\0', 'é', '\u{2003}'
        ]),
        any::<char>(),
    ]
}

fn edit() -> impl Strategy<Value = Edit> {
    let at = 0..LEN + 4;
    prop_oneof![
        (at.clone(), character()).prop_map(|(i, c)| Edit::Insert(i, c)),
        (at.clone(), character()).prop_map(|(i, c)| Edit::Replace(i, c)),
        at.clone().prop_map(Edit::Remove),
        at.clone().prop_map(Edit::Truncate),
        (at, 1..50usize).prop_map(|(i, n)| Edit::Repeat(i, n)),
    ]
}

/// `text` with `edit` applied at a character position (clamped to the text).
fn apply(text: &str, edit: &Edit) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let clamp = |i: usize, len: usize| i.min(len);
    match *edit {
        Edit::Insert(i, c) => chars.insert(clamp(i, chars.len()), c),
        Edit::Replace(i, c) => {
            if let Some(slot) = chars.get_mut(i) {
                *slot = c;
            }
        }
        Edit::Remove(i) => {
            if i < chars.len() {
                chars.remove(i);
            }
        }
        Edit::Truncate(i) => chars.truncate(i),
        Edit::Repeat(i, n) => {
            let start = clamp(i, chars.len());
            let end = clamp(start + n, chars.len());
            let copy: Vec<char> = chars[start..end].to_vec();
            chars.splice(end..end, copy);
        }
    }
    chars.into_iter().collect()
}

/// `PROPTEST_CASES` if set, else `default`.
fn cases(default: u32) -> ProptestConfig {
    let from_env = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok());
    ProptestConfig::with_cases(from_env.unwrap_or(default))
}

proptest! {
    #![proptest_config(cases(4_000))]

    #[test]
    fn arbitrary_text_is_refused_with_a_reason_unless_it_is_a_token(
        text in prop_oneof![
            any::<String>(),
            prop::collection::vec(prop::sample::select("mrdjoin_0aAfFg \t".as_bytes()), 0..120)
                .prop_map(|bytes| String::from_utf8(bytes).unwrap()),
            prop::collection::vec(any::<u8>(), 0..200)
                .prop_map(|bytes| String::from_utf8_lossy(&bytes).into_owned()),
        ],
    ) {
        check(&text)?;
    }

    #[test]
    fn valid_tokens_round_trip_in_lower_case(text in valid()) {
        prop_assert!(reference(&text).is_some());
        check(&text)?;
    }

    #[test]
    fn mutated_tokens_are_refused_unless_they_are_still_tokens(
        text in valid(),
        edits in prop::collection::vec(edit(), 1..5),
    ) {
        let mutated = edits.iter().fold(text, |text, edit| apply(&text, edit));
        check(&mutated)?;
    }
}

#[test]
fn the_reason_names_the_part_that_is_wrong() {
    let fingerprint = "0123456789abcdef0123456789ABCDEF";
    let secret = "ab".repeat(32);
    let cases = [
        ("", "does not start with `mrdjoin_`"),
        ("MRDJOIN_x_y", "does not start with `mrdjoin_`"),
        ("mrdjoin_abc", "three parts"),
        (&format!("mrdjoin_{fingerprint}_{secret}_"), "three parts"),
        (
            &format!("mrdjoin_{}_{secret}", &fingerprint[1..]),
            "fingerprint",
        ),
        (
            &format!("mrdjoin_{fingerprint}_{}g", &secret[1..]),
            "secret",
        ),
    ];
    for (text, reason) in cases {
        let message = JoinToken::parse(text).unwrap_err().to_string();
        assert!(message.contains(reason), "{text:?}: {message}");
    }
    let token = JoinToken::parse(&format!(" mrdjoin_{fingerprint}_{secret}\n")).unwrap();
    assert_eq!(
        token.as_str(),
        format!("mrdjoin_{}_{secret}", fingerprint.to_ascii_lowercase())
    );
}
