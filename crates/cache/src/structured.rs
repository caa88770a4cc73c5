//! Structured Field Dictionaries (RFC 8941 §3.2, §4.2.2), as far as targeted cache-control
//! fields need them: each member's key and its bare item as text, parameters skipped.

/// A dictionary member's value, as a cache directive's argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    /// Boolean true (a key without value, or `?1`): a directive without argument.
    True,
    /// Boolean false (`?0`): the directive is absent.
    False,
    /// An integer, as written (`-` and up to 15 digits).
    Integer(String),
    /// A decimal, as written.
    Decimal(String),
    /// A string, unescaped.
    String(String),
    /// A token.
    Token(String),
    /// A byte sequence or an inner list: no directive takes one.
    Other,
}

/// The members of a dictionary, in order, a key given twice keeping its last value
/// (§4.2.2); `None` when `input` is not a valid dictionary.
pub fn parse_dictionary(input: &str) -> Option<Vec<(String, Member)>> {
    let mut parser = Parser {
        input: input.as_bytes(),
        at: 0,
    };
    parser.skip(b" ");
    let mut members: Vec<(String, Member)> = Vec::new();
    while !parser.done() {
        let key = parser.key()?;
        let value = if parser.eat(b'=') {
            if parser.peek() == Some(b'(') {
                parser.inner_list()?;
                Member::Other
            } else {
                parser.bare_item()?
            }
        } else {
            Member::True
        };
        parser.parameters()?;
        match members.iter_mut().find(|(k, _)| *k == key) {
            Some(member) => member.1 = value,
            None => members.push((key, value)),
        }
        parser.skip(b" \t");
        if parser.done() {
            break;
        }
        if !parser.eat(b',') {
            return None;
        }
        parser.skip(b" \t");
        if parser.done() {
            return None; // a trailing comma
        }
    }
    Some(members)
}

struct Parser<'a> {
    input: &'a [u8],
    at: usize,
}

impl Parser<'_> {
    fn done(&self) -> bool {
        self.at >= self.input.len()
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let matched = self.peek() == Some(byte);
        self.at += usize::from(matched);
        matched
    }

    fn skip(&mut self, bytes: &[u8]) {
        while self.peek().is_some_and(|b| bytes.contains(&b)) {
            self.at += 1;
        }
    }

    fn take_while(&mut self, accept: impl Fn(u8) -> bool) -> &str {
        let start = self.at;
        while self.peek().is_some_and(&accept) {
            self.at += 1;
        }
        // Every accepted byte is ASCII.
        std::str::from_utf8(&self.input[start..self.at]).unwrap_or_default()
    }

    /// key = ( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )
    fn key(&mut self) -> Option<String> {
        if !self
            .peek()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'*')
        {
            return None;
        }
        let key = self
            .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.*".contains(&b));
        Some(key.to_owned())
    }

    fn bare_item(&mut self) -> Option<Member> {
        match self.peek()? {
            b'-' | b'0'..=b'9' => self.number(),
            b'"' => self.string().map(Member::String),
            b'?' => {
                self.at += 1;
                let value = self.peek()?;
                self.at += 1;
                match value {
                    b'1' => Some(Member::True),
                    b'0' => Some(Member::False),
                    _ => None,
                }
            }
            b':' => {
                self.at += 1;
                self.take_while(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b));
                self.eat(b':').then_some(Member::Other)
            }
            b if b.is_ascii_alphabetic() || b == b'*' => {
                let token =
                    self.take_while(|b| crate::directives::is_tchar(b) || b":/".contains(&b));
                Some(Member::Token(token.to_owned()))
            }
            _ => None,
        }
    }

    /// An integer (at most 15 digits) or a decimal (12 digits, a dot, 1 to 3 digits).
    fn number(&mut self) -> Option<Member> {
        let negative = self.eat(b'-');
        let integer = self.take_while(|b| b.is_ascii_digit()).to_owned();
        if integer.is_empty() {
            return None;
        }
        let sign = if negative { "-" } else { "" };
        if !self.eat(b'.') {
            return (integer.len() <= 15).then(|| Member::Integer(format!("{sign}{integer}")));
        }
        let fraction = self.take_while(|b| b.is_ascii_digit());
        let valid = integer.len() <= 12 && (1..=3).contains(&fraction.len());
        valid.then(|| Member::Decimal(format!("{sign}{integer}.{fraction}")))
    }

    fn string(&mut self) -> Option<String> {
        self.at += 1;
        let mut text = String::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.at += 1;
                    return Some(text);
                }
                b'\\' => {
                    self.at += 1;
                    let escaped = self.peek().filter(|b| *b == b'"' || *b == b'\\')?;
                    text.push(char::from(escaped));
                }
                b @ 0x20..=0x7e => text.push(char::from(b)),
                _ => return None,
            }
            self.at += 1;
        }
    }

    fn inner_list(&mut self) -> Option<()> {
        self.at += 1;
        loop {
            self.skip(b" ");
            if self.eat(b')') {
                return Some(());
            }
            self.bare_item()?;
            self.parameters()?;
            if !matches!(self.peek()?, b' ' | b')') {
                return None;
            }
        }
    }

    fn parameters(&mut self) -> Option<()> {
        while self.eat(b';') {
            self.skip(b" ");
            self.key()?;
            if self.eat(b'=') {
                self.bare_item()?;
            }
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8941_4_2_2_dictionaries_parse_with_the_last_value_of_a_key() {
        let members =
            parse_dictionary("max-age=60, no-store, private=\"a, b\";x=1, max-age=5").unwrap();
        assert_eq!(
            members,
            [
                ("max-age".to_owned(), Member::Integer("5".into())),
                ("no-store".to_owned(), Member::True),
                ("private".to_owned(), Member::String("a, b".into())),
            ]
        );
        assert_eq!(
            parse_dictionary("a=?0, b=(1 2);p, c=:AAE=:, d=tok/en, e=1.5").unwrap(),
            [
                ("a".to_owned(), Member::False),
                ("b".to_owned(), Member::Other),
                ("c".to_owned(), Member::Other),
                ("d".to_owned(), Member::Token("tok/en".into())),
                ("e".to_owned(), Member::Decimal("1.5".into())),
            ]
        );
        assert_eq!(parse_dictionary("").unwrap(), []);
    }

    #[test]
    fn rfc8941_4_2_2_what_is_not_a_dictionary_is_refused() {
        for invalid in [
            "Max-Age=60",
            "max-age=60,",
            "max-age =60",
            "max-age=\"unterminated",
            "max-age=1234567890123456",
            "a=1.2345",
            "a b",
        ] {
            assert_eq!(parse_dictionary(invalid), None, "{invalid}");
        }
    }
}
