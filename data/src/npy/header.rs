//! A parser for the subset of Python literals NumPy writes in `.npy` headers (strings,
//! integers, booleans, tuples, lists and dicts); nothing in a header is ever evaluated.

use super::MAX_HEADER_DEPTH;

/// A parsed Python literal together with the text it was parsed from.
#[derive(Debug)]
pub(super) struct Node {
    pub(super) kind: Value,
    pub(super) source: String,
}

/// The Python literal forms that appear in `.npy` headers.
#[derive(Debug)]
pub(super) enum Value {
    Str(String),
    Int { negative: bool, digits: String },
    Bool(bool),
    None,
    Tuple(Vec<Node>),
    List(Vec<Node>),
    Dict(Vec<(String, Node)>),
}

/// Recursive-descent parser over the header text.
#[derive(Debug)]
pub(super) struct Parser<'a> {
    text: &'a str,
    pos: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    pub(super) fn new(text: &'a str) -> Self {
        Parser {
            text,
            pos: 0,
            depth: 0,
        }
    }

    /// Parses one literal followed only by whitespace.
    pub(super) fn parse_document(&mut self) -> Result<Node, String> {
        let node = self.parse_value()?;
        self.skip_ws();
        if self.pos < self.text.len() {
            return Err(format!(
                "unexpected text after the header dict at offset {}: {}",
                self.pos,
                self.rest_excerpt()
            ));
        }
        Ok(node)
    }

    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            if c.is_whitespace() || c == '\0' {
                self.pos += c.len_utf8();
            } else {
                break;
            }
        }
    }

    fn rest_excerpt(&self) -> String {
        let rest: String = self.text[self.pos..].chars().take(20).collect();
        if rest.is_empty() {
            "end of header".to_owned()
        } else {
            format!("'{}'", rest.escape_debug())
        }
    }

    fn expected(&self, what: &str) -> String {
        format!(
            "expected {what} at offset {}, found {}",
            self.pos,
            self.rest_excerpt()
        )
    }

    fn parse_value(&mut self) -> Result<Node, String> {
        self.skip_ws();
        let start = self.pos;
        let kind = match self.peek() {
            Some('\'' | '"') => Value::Str(self.parse_string()?),
            Some('(') => Value::Tuple(self.parse_sequence('(', ')')?),
            Some('[') => Value::List(self.parse_sequence('[', ']')?),
            Some('{') => self.parse_dict()?,
            Some(c) if c.is_ascii_digit() || c == '-' || c == '+' => self.parse_int()?,
            Some(c) if c.is_ascii_alphabetic() => {
                let word = self.take_while(|c| c.is_ascii_alphanumeric() || c == '_');
                match word {
                    "True" => Value::Bool(true),
                    "False" => Value::Bool(false),
                    "None" => Value::None,
                    _ => {
                        self.pos = start;
                        return Err(self.expected("a Python literal"));
                    }
                }
            }
            _ => return Err(self.expected("a Python literal")),
        };
        Ok(Node {
            kind,
            source: self.text[start..self.pos].to_owned(),
        })
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> &'a str {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if !keep(c) {
                break;
            }
            self.pos += c.len_utf8();
        }
        &self.text[start..self.pos]
    }

    fn parse_string(&mut self) -> Result<String, String> {
        let start = self.pos;
        let Some(quote) = self.bump() else {
            return Err(self.expected("a string"));
        };
        let mut out = String::new();
        loop {
            match self.bump() {
                None => {
                    self.pos = start;
                    return Err(self.expected("a closed string"));
                }
                Some(c) if c == quote => return Ok(out),
                Some('\\') => match self.bump() {
                    Some('n') => out.push('\n'),
                    Some('t') => out.push('\t'),
                    Some('0') => out.push('\0'),
                    Some(c) => out.push(c),
                    None => {
                        self.pos = start;
                        return Err(self.expected("a closed string"));
                    }
                },
                Some(c) => out.push(c),
            }
        }
    }

    fn parse_int(&mut self) -> Result<Value, String> {
        let negative = match self.peek() {
            Some('-') => {
                self.pos += 1;
                true
            }
            Some('+') => {
                self.pos += 1;
                false
            }
            _ => false,
        };
        let digits = self.take_while(|c| c.is_ascii_digit() || c == '_');
        let digits: String = digits.chars().filter(|&c| c != '_').collect();
        if digits.is_empty() {
            return Err(self.expected("digits"));
        }
        // Python 2 wrote long integers with an 'L' suffix.
        if matches!(self.peek(), Some('L' | 'l')) {
            self.pos += 1;
        }
        Ok(Value::Int { negative, digits })
    }

    fn enter(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_HEADER_DEPTH {
            return Err(format!(
                "brackets nested more than {MAX_HEADER_DEPTH} deep at offset {}",
                self.pos
            ));
        }
        Ok(())
    }

    /// Parses `(a, b, ...)` or `[a, b, ...]`, allowing a trailing comma.
    fn parse_sequence(&mut self, open: char, close: char) -> Result<Vec<Node>, String> {
        self.enter()?;
        self.pos += open.len_utf8();
        let mut items = Vec::new();
        loop {
            self.skip_ws();
            if self.peek() == Some(close) {
                self.pos += close.len_utf8();
                break;
            }
            items.push(self.parse_value()?);
            self.skip_ws();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(c) if c == close => {}
                _ => return Err(self.expected(&format!("',' or '{close}'"))),
            }
        }
        self.depth -= 1;
        Ok(items)
    }

    /// Parses `{'key': value, ...}` with string keys, allowing a trailing comma.
    fn parse_dict(&mut self) -> Result<Value, String> {
        self.enter()?;
        self.pos += 1;
        let mut entries = Vec::new();
        loop {
            self.skip_ws();
            match self.peek() {
                Some('}') => {
                    self.pos += 1;
                    break;
                }
                Some('\'' | '"') => {}
                _ => return Err(self.expected("a string key or '}'")),
            }
            let key = self.parse_string()?;
            self.skip_ws();
            if self.peek() != Some(':') {
                return Err(self.expected("':'"));
            }
            self.pos += 1;
            let value = self.parse_value()?;
            entries.push((key, value));
            self.skip_ws();
            match self.peek() {
                Some(',') => self.pos += 1,
                Some('}') => {}
                _ => return Err(self.expected("',' or '}'")),
            }
        }
        self.depth -= 1;
        Ok(Value::Dict(entries))
    }
}
