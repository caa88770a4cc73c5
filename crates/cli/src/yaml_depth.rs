//! How deep a YAML text nests its flow collections (`[…]`, `{…}`), measured in one pass before
//! a YAML parser sees it: libyaml's time grows with the square of that depth (a file nested
//! 100,000 deep took minutes), while a definition needs a handful of levels. Nesting in block
//! style (indentation, `- - -`) costs the parser linear time, and serde's own recursion limit
//! refuses it when the document is read.

/// Where flow collections first nest deeper than the limit (1-based line and column).
#[derive(Debug, PartialEq, Eq)]
pub struct TooDeep {
    /// The line of the collection that goes past the limit.
    pub line: usize,
    /// Its column, in characters.
    pub column: usize,
}

/// Fails at the first flow collection of `text` that opens more than `max` deep.
///
/// It reads only what decides where a flow collection opens (quoted scalars, comments, block
/// scalars, the indicators that start a node), and errs on the high side: a bracket inside an
/// unusual plain scalar may count as an opening. (A quote that begins a continuation line of a
/// plain scalar is taken for a quoted scalar; a file made to hide brackets that way is still
/// refused by serde's recursion limit, only slowly.)
pub fn check(text: &str, max: usize) -> Result<(), TooDeep> {
    let mut depth = 0;
    // Inside a quoted scalar (its quote), which may go on over lines.
    let mut quote: Option<char> = None;
    // Inside a block scalar (`|`, `>`) of a node on a line indented this much.
    let mut block: Option<usize> = None;
    for (index, line) in text.lines().enumerate() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        if let Some(parent) = block {
            if line.trim().is_empty() || indent > parent {
                continue;
            }
            block = None;
        }
        // A node may begin here (at a line's start, or after an indicator and blanks).
        let mut node_start = quote.is_none();
        // The last character was a blank (or there was none): a `#` here starts a comment.
        let mut after_blank = true;
        let mut chars = line.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            if let Some(q) = quote {
                match c {
                    '\\' if q == '"' => {
                        chars.next();
                    }
                    '\'' if q == '\'' && chars.peek().is_some_and(|(_, n)| *n == '\'') => {
                        chars.next();
                    }
                    c if c == q => quote = None,
                    _ => {}
                }
                after_blank = false;
                continue;
            }
            let blank_next = chars.peek().is_none_or(|(_, n)| n.is_whitespace());
            match c {
                ' ' | '\t' => {
                    after_blank = true;
                    continue;
                }
                '#' if after_blank => break,
                '\'' | '"' if node_start => quote = Some(c),
                '[' | '{' if node_start || depth > 0 => {
                    depth += 1;
                    if depth > max {
                        return Err(TooDeep {
                            line: index + 1,
                            column: line[..at].chars().count() + 1,
                        });
                    }
                    node_start = true;
                    after_blank = false;
                    continue;
                }
                ']' | '}' if depth > 0 => depth -= 1,
                // In a flow collection, `:` may be followed by the value at once (`"a":[1]`).
                ',' | ':' if depth > 0 => {
                    node_start = true;
                    after_blank = false;
                    continue;
                }
                '-' | '?' | ':' if blank_next => {
                    node_start = true;
                    after_blank = false;
                    continue;
                }
                '|' | '>' if node_start && depth == 0 => {
                    block = Some(indent);
                    break;
                }
                // An anchor, alias or tag before a node: the node may still begin after it.
                '&' | '*' | '!' if node_start => {
                    while chars
                        .peek()
                        .is_some_and(|(_, n)| !n.is_whitespace() && !"[]{},".contains(*n))
                    {
                        chars.next();
                    }
                    after_blank = false;
                    continue;
                }
                _ => {}
            }
            node_start = false;
            after_blank = false;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_of(text: &str) -> usize {
        (0..100).find(|max| check(text, *max).is_ok()).unwrap()
    }

    #[test]
    fn counts_flow_collections_wherever_a_node_starts() {
        assert_eq!(depth_of("a: 1\nb: [1, 2]\n"), 1);
        assert_eq!(depth_of("a: {b: [c, {d: e}]}\n"), 3);
        assert_eq!(depth_of("- [[1]]\n- ? [x]\n  : y\n"), 2);
        assert_eq!(depth_of("[\n  [\n    [1]\n  ]\n]\n"), 3);
        assert_eq!(depth_of(r#"{"a":[{"b":[1]}]}"#), 4);
        assert_eq!(depth_of("a: &x [1]\nb: !!seq [[2]]\n"), 2);
    }

    #[test]
    fn brackets_in_scalars_and_comments_are_not_collections() {
        let text = "a: b[c]{d\n\
                    q: '[[[' # [[[\n\
                    r: \"[[[\\\" [[[\"\n\
                    s: 'it''s [[['\n\
                    t: |\n  [[[\n  {{{\n\
                    u: >-\n    [[[\n\n    [[[\n\
                    v: \"multi\n  [[[ line\"\n\
                    w: [x]\n";
        assert_eq!(depth_of(text), 1);
    }

    #[test]
    fn names_where_it_goes_too_deep() {
        let deep = format!("org: demo\nregions: {}{}\n", "[".repeat(10), "]".repeat(10));
        assert_eq!(check(&deep, 10), Ok(()));
        assert_eq!(
            check(&deep, 9),
            Err(TooDeep {
                line: 2,
                column: 19
            })
        );
    }
}
