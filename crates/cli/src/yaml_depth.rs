//! How deep a YAML text nests its collections, measured in one pass before a YAML parser sees
//! it: libyaml's time grows with the square of the depth of flow collections (`[…]`, `{…}`; a
//! file nested 100,000 deep took minutes), while a definition needs a handful of levels. Block
//! collections (indentation, `- - -`) count too, so that the limit is one, whatever the style.

use std::iter::Peekable;
use std::str::CharIndices;

/// Where collections first nest deeper than the limit (1-based line and column).
#[derive(Debug, PartialEq, Eq)]
pub struct TooDeep {
    /// The line of the collection that goes past the limit.
    pub line: usize,
    /// Its column, in characters.
    pub column: usize,
}

/// Fails at the first collection of `text` that opens more than `max` deep.
///
/// It reads only what decides where a collection opens: indentation and the `-`/`?` indicators
/// for block collections; quoted scalars, comments, block scalars and the indicators that start
/// a node for flow collections. It errs on the high side for flow collections (a bracket inside
/// an unusual plain scalar may count as an opening) and may count a block sequence written at
/// its parent key's indentation as no level of its own; either way it finds depth in
/// proportion to the parser's, which is what keeps the parser fast. (A quote that begins a
/// continuation line of a plain scalar is taken for a quoted scalar; a file made to hide
/// brackets that way is still refused by serde's recursion limit, only slowly.)
pub fn check(text: &str, max: usize) -> Result<(), TooDeep> {
    let mut scan = Scan::default();
    for (index, line) in text.lines().enumerate() {
        scan.line(line, max).map_err(|at| TooDeep {
            line: index + 1,
            column: line[..at].chars().count() + 1,
        })?;
    }
    Ok(())
}

/// What a scan carries from one line to the next.
#[derive(Default)]
struct Scan {
    /// Open flow collections.
    flow: usize,
    /// The indentation of each open block collection, outermost first.
    indents: Vec<usize>,
    /// Inside a quoted scalar (its quote), which may go on over lines.
    quote: Option<char>,
    /// Inside a block scalar (`|`, `>`) of a node on a line indented this much.
    block_scalar: Option<usize>,
}

impl Scan {
    /// Reads `line`; fails with the byte offset of a collection that opens more than `max` deep.
    fn line(&mut self, line: &str, max: usize) -> Result<(), usize> {
        let content = line.trim_start_matches(' ');
        let indent = line.len() - content.len();
        if let Some(parent) = self.block_scalar {
            if content.trim().is_empty() || indent > parent {
                return Ok(());
            }
            self.block_scalar = None;
        }
        let block = self.quote.is_none() && self.flow == 0;
        if block && !content.is_empty() && !content.starts_with('#') {
            while self.indents.last().is_some_and(|i| *i >= indent) {
                self.indents.pop();
            }
            self.indents.push(indent);
            if self.indents.len() > max {
                return Err(indent);
            }
        }
        // Block collections open on this line: those of the lines above, and compact ones.
        let mut levels = self.indents.len();
        // A node may begin here (at a line's start, or after an indicator and blanks).
        let mut node_start = self.quote.is_none();
        // The last character was a blank (or there was none): a `#` here starts a comment.
        let mut after_blank = true;
        let mut chars = line.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            if let Some(q) = self.quote {
                if closes(&mut chars, q, c) {
                    self.quote = None;
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
                '\'' | '"' if node_start => self.quote = Some(c),
                '[' | '{' if node_start || self.flow > 0 => {
                    self.flow += 1;
                    if levels + self.flow > max {
                        return Err(at);
                    }
                    node_start = true;
                    after_blank = false;
                    continue;
                }
                ']' | '}' if self.flow > 0 => self.flow -= 1,
                // In a flow collection, `:` may be followed by the value at once (`"a":[1]`).
                ',' | ':' if self.flow > 0 => {
                    node_start = true;
                    after_blank = false;
                    continue;
                }
                '-' | '?' | ':' if blank_next => {
                    // `- - x`: a block sequence in a block sequence, on one line (the line's
                    // first indicator is its indentation's collection, counted above).
                    if c != ':' && node_start && self.flow == 0 && at > indent {
                        levels += 1;
                        if levels > max {
                            return Err(at);
                        }
                    }
                    node_start = true;
                    after_blank = false;
                    continue;
                }
                '|' | '>' if node_start && self.flow == 0 => {
                    self.block_scalar = Some(indent);
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
        Ok(())
    }
}

/// Whether `c`, read inside a scalar quoted with `quote`, ends it (an escaped quote does not;
/// the escape's second character is read here).
fn closes(chars: &mut Peekable<CharIndices<'_>>, quote: char, c: char) -> bool {
    match c {
        '\\' if quote == '"' => {
            chars.next();
            false
        }
        '\'' if quote == '\'' && chars.peek().is_some_and(|(_, n)| *n == '\'') => {
            chars.next();
            false
        }
        c => c == quote,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth_of(text: &str) -> usize {
        (0..100).find(|max| check(text, *max).is_ok()).unwrap()
    }

    #[test]
    fn counts_flow_collections_wherever_a_node_starts() {
        assert_eq!(depth_of("a: 1\nb: [1, 2]\n"), 2);
        assert_eq!(depth_of("a: {b: [c, {d: e}]}\n"), 4);
        assert_eq!(depth_of("- [[1]]\n- ? [x]\n  : y\n"), 3);
        assert_eq!(depth_of("[\n  [\n    [1]\n  ]\n]\n"), 4);
        assert_eq!(depth_of(r#"{"a":[{"b":[1]}]}"#), 5);
        assert_eq!(depth_of("a: &x [1]\nb: !!seq [[2]]\n"), 3);
    }

    #[test]
    fn counts_block_collections_by_indentation_and_compact_sequences() {
        assert_eq!(depth_of("a:\n  b:\n    c: 1\n  d: 2\ne: 3\n"), 3);
        assert_eq!(depth_of("a:\n  # a comment\n\n  b: 1\n"), 2);
        let compact = format!("env:\n{}x\n", "- ".repeat(10));
        assert_eq!(depth_of(&compact), 10);
        assert_eq!(
            check(&compact, 9),
            Err(TooDeep {
                line: 2,
                column: 19
            })
        );
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
        assert_eq!(depth_of(text), 2);
    }

    #[test]
    fn names_where_it_goes_too_deep() {
        let deep = format!("org: demo\nregions: {}{}\n", "[".repeat(10), "]".repeat(10));
        assert_eq!(check(&deep, 11), Ok(()));
        assert_eq!(
            check(&deep, 10),
            Err(TooDeep {
                line: 2,
                column: 19
            })
        );
    }
}
