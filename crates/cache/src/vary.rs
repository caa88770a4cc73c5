//! Secondary keys (RFC 9111 §4.1): which stored response, among those of one URI, a request
//! may be answered with — by the request fields the response's `Vary` names, and by the
//! fields the service's policy puts in the key.

use http::header::{HeaderName, VARY};
use http::HeaderMap;

/// The field names a response's `Vary` lists (lowercase, each once; `*` left out).
pub fn vary_names(response: &HeaderMap) -> Vec<HeaderName> {
    let mut names: Vec<HeaderName> = vary_members(response)
        .filter(|member| *member != "*")
        .filter_map(|member| HeaderName::from_bytes(member.as_bytes()).ok())
        .collect();
    names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
    names.dedup();
    names
}

/// Whether `Vary` lists `*`: the response matches no later request (§4.1).
pub fn varies_on_everything(response: &HeaderMap) -> bool {
    vary_members(response).any(|member| member == "*")
}

fn vary_members(response: &HeaderMap) -> impl Iterator<Item = &str> {
    response
        .get_all(VARY)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .filter(|member| !member.is_empty())
}

/// The values a request had for some fields: what a stored response was selected by.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Variant {
    /// Each field's name and its lines combined (`None`: the request did not have it).
    fields: Vec<(HeaderName, Option<String>)>,
}

impl Variant {
    /// The values of `names` in `request`.
    pub fn of(names: &[HeaderName], request: &HeaderMap) -> Variant {
        Variant {
            fields: names
                .iter()
                .map(|name| (name.clone(), combined(request, name)))
                .collect(),
        }
    }

    /// The field names this variant was selected by.
    pub fn names(&self) -> impl Iterator<Item = &HeaderName> {
        self.fields.iter().map(|(name, _)| name)
    }

    /// Whether `request` has the same values for every field (§4.1: absent only matches
    /// absent; lines are combined and whitespace around commas does not count).
    pub fn matches(&self, request: &HeaderMap) -> bool {
        self.fields
            .iter()
            .all(|(name, value)| combined(request, name) == *value)
    }

    /// Each field's name and combined value (`None`: absent), as [`Variant::from_fields`]
    /// takes them back.
    pub(crate) fn fields(&self) -> &[(HeaderName, Option<String>)] {
        &self.fields
    }

    /// The variant of these field values (read back from the disk tier).
    pub(crate) fn from_fields(fields: Vec<(HeaderName, Option<String>)>) -> Variant {
        Variant { fields }
    }

    /// Bytes held, for the store's weight.
    pub fn size(&self) -> usize {
        self.fields
            .iter()
            .map(|(name, value)| name.as_str().len() + value.as_ref().map_or(0, String::len))
            .sum()
    }
}

/// A field's lines joined by commas, each member trimmed: a normalization RFC 9111 §4.1
/// allows (whitespace that is not significant).
fn combined(request: &HeaderMap, name: &HeaderName) -> Option<String> {
    let mut lines = request.get_all(name).iter().peekable();
    lines.peek()?;
    let members: Vec<String> = lines
        .flat_map(|value| {
            String::from_utf8_lossy(value.as_bytes())
                .split(',')
                .map(|member| member.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    Some(members.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fields;

    #[test]
    fn rfc9111_4_1_vary_names_are_case_insensitive_and_combined_over_lines() {
        let response = fields(&[("vary", "Accept-Encoding, accept"), ("vary", "x-a")]);
        let names = vary_names(&response);
        assert_eq!(
            names.iter().map(|n| n.as_str()).collect::<Vec<_>>(),
            ["accept", "accept-encoding", "x-a"]
        );
        assert!(!varies_on_everything(&response));
        assert!(varies_on_everything(&fields(&[
            ("vary", "accept"),
            ("vary", "*")
        ])));
    }

    #[test]
    fn rfc9111_4_1_a_stored_response_matches_requests_with_the_same_varied_values() {
        let names = [HeaderName::from_static("accept-encoding")];
        let stored = Variant::of(&names, &fields(&[("accept-encoding", "gzip, br")]));
        assert!(stored.matches(&fields(&[("accept-encoding", "gzip,br")])));
        assert!(stored.matches(&fields(&[
            ("accept-encoding", "gzip"),
            ("accept-encoding", "br")
        ])));
        assert!(!stored.matches(&fields(&[("accept-encoding", "br, gzip")])));
        assert!(!stored.matches(&fields(&[])));
        // Absent matches only absent, not empty.
        let absent = Variant::of(&names, &fields(&[]));
        assert!(absent.matches(&fields(&[("x-other", "1")])));
        assert!(!absent.matches(&fields(&[("accept-encoding", "")])));
    }
}
