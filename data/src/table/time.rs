//! Parsing and formatting of the time column: numbers, `YYYY-MM-DD` dates and ISO 8601
//! date-times, as seconds since the Unix epoch (UTC), plus the text cell rules shared by the
//! CSV reader and Parquet string columns.

use super::TimeKind;

/// Seconds in a day.
pub(super) const DAY: f64 = 86_400.0;

/// Days since 1970-01-01 of the proleptic Gregorian date `y-m-d` (Howard Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `(y, m, d)` of day `z` since 1970-01-01.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A parsed date or date-time, in seconds since the epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Stamp {
    /// `YYYY-MM-DD`: midnight UTC of that day.
    Date(f64),
    /// A date with a time of day.
    DateTime(f64),
}

/// A cursor over the ASCII bytes of a cell.
struct Cursor<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    /// Exactly `n` decimal digits.
    fn digits(&mut self, n: usize) -> Option<u32> {
        let part = self.s.get(self.pos..self.pos + n)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        self.pos += n;
        Some(
            part.iter()
                .fold(0, |acc, &b| acc * 10 + u32::from(b - b'0')),
        )
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.s.get(self.pos) == Some(&c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn done(&self) -> bool {
        self.pos == self.s.len()
    }
}

/// Parses `YYYY-MM-DD`, or a date-time `YYYY-MM-DD[T| ]HH:MM[:SS[.fff]]` with an optional `Z`
/// or `±HH:MM` / `±HHMM` / `±HH` offset (normalized to UTC). `None` if `s` is not of that form
/// or names an impossible date or time.
pub(super) fn parse_stamp(s: &str) -> Option<Stamp> {
    let mut c = Cursor {
        s: s.as_bytes(),
        pos: 0,
    };
    let y = i64::from(c.digits(4)?);
    if !c.eat(b'-') {
        return None;
    }
    let m = c.digits(2)?;
    if !c.eat(b'-') {
        return None;
    }
    let d = c.digits(2)?;
    if !(1..=12).contains(&m) || d == 0 || d > days_in_month(y, m) {
        return None;
    }
    let day = days_from_civil(y, m, d) as f64 * DAY;
    if c.done() {
        return Some(Stamp::Date(day));
    }
    if !(c.eat(b'T') || c.eat(b't') || c.eat(b' ')) {
        return None;
    }
    let hh = c.digits(2)?;
    if !c.eat(b':') {
        return None;
    }
    let mm = c.digits(2)?;
    let mut ss = 0;
    let mut frac = 0.0;
    if c.eat(b':') {
        ss = c.digits(2)?;
        if c.eat(b'.') || c.eat(b',') {
            let start = c.pos;
            while c.peek().is_some_and(|b| b.is_ascii_digit()) {
                c.pos += 1;
            }
            if c.pos == start {
                return None;
            }
            // "0." + the digits parses exactly as the fraction it writes.
            frac = format!("0.{}", &s[start..c.pos]).parse().ok()?;
        }
    }
    if hh > 23 || mm > 59 || ss > 59 {
        return None;
    }
    let mut offset = 0i64;
    match c.peek() {
        None => {}
        Some(b'Z' | b'z') => c.pos += 1,
        Some(sign @ (b'+' | b'-')) => {
            c.pos += 1;
            let oh = c.digits(2)?;
            let om = if c.eat(b':') {
                c.digits(2)?
            } else if c.done() {
                0
            } else {
                c.digits(2)?
            };
            if oh > 23 || om > 59 {
                return None;
            }
            offset = i64::from(oh * 3600 + om * 60);
            if sign == b'-' {
                offset = -offset;
            }
        }
        Some(_) => return None,
    }
    if !c.done() {
        return None;
    }
    let secs = i64::from(hh * 3600 + mm * 60 + ss) - offset;
    Some(Stamp::DateTime(day + secs as f64 + frac))
}

/// Quotes a cell for a message, shortened if long.
pub(super) fn quote(cell: &str) -> String {
    const MAX: usize = 60;
    if cell.chars().count() <= MAX {
        format!("{cell:?}")
    } else {
        let head: String = cell.chars().take(MAX).collect();
        format!("{head:?}... ({} bytes)", cell.len())
    }
}

/// True if `cell` spells NaN or an infinity the way `str::parse::<f64>` accepts them.
fn spells_non_finite(cell: &str) -> bool {
    let t = cell.trim_start_matches(['+', '-']).to_ascii_lowercase();
    t == "nan" || t == "inf" || t == "infinity"
}

/// Parses a value cell as `f32`. The error says what was expected and quotes what was found.
pub(super) fn parse_value(cell: &str) -> Result<f32, String> {
    if cell.is_empty() {
        return Err(
            "expected a number, found an empty cell (missing values are not supported)".into(),
        );
    }
    match cell.parse::<f32>() {
        Err(_) => Err(format!("expected a number, found {}", quote(cell))),
        Ok(v) if v.is_nan() => Err(format!(
            "expected a finite number, found NaN ({}); missing values are not supported",
            quote(cell)
        )),
        Ok(v) if v.is_infinite() => {
            if spells_non_finite(cell) {
                Err(format!(
                    "expected a finite number, found an infinite value ({})",
                    quote(cell)
                ))
            } else {
                Err(format!(
                    "expected a number within the float32 range (±3.4e38), found {}",
                    quote(cell)
                ))
            }
        }
        Ok(v) => Ok(v),
    }
}

/// Checks that a value read as `f64` is finite and fits in `f32`.
pub(super) fn value_from_f64(v: f64) -> Result<f32, String> {
    if v.is_nan() {
        Err("expected a finite number, found NaN; missing values are not supported".into())
    } else if v.is_infinite() {
        Err(format!("expected a finite number, found {v}"))
    } else if v.abs() > f64::from(f32::MAX) {
        Err(format!(
            "expected a number within the float32 range (±3.4e38), found {v:e}"
        ))
    } else {
        Ok(v as f32)
    }
}

/// The rules of a time column held as text: the first cell decides between a number and a
/// date (or date-time); a date column becomes a date-time column at its first cell with a time
/// of day.
#[derive(Debug, Default)]
pub(super) struct TextTime {
    kind: Option<TimeKind>,
}

impl TextTime {
    /// The kind decided so far (`Number` before any cell).
    pub(super) fn kind(&self) -> TimeKind {
        self.kind.unwrap_or(TimeKind::Number)
    }

    /// Parses one cell into seconds (dates) or the number itself.
    pub(super) fn parse(&mut self, cell: &str) -> Result<f64, String> {
        const DATES: &str =
            "a date YYYY-MM-DD or a date-time YYYY-MM-DDTHH:MM:SS (optional fraction, Z or ±HH:MM)";
        if cell.is_empty() {
            return Err("expected a time, found an empty cell".into());
        }
        let number = || -> Result<Option<f64>, String> {
            match cell.parse::<f64>() {
                Ok(v) if v.is_finite() => Ok(Some(v)),
                Ok(_) => Err(format!("expected a finite time, found {}", quote(cell))),
                Err(_) => Ok(None),
            }
        };
        match self.kind {
            None => {
                if let Some(v) = number()? {
                    self.kind = Some(TimeKind::Number);
                    return Ok(v);
                }
                match parse_stamp(cell) {
                    Some(Stamp::Date(v)) => {
                        self.kind = Some(TimeKind::Date);
                        Ok(v)
                    }
                    Some(Stamp::DateTime(v)) => {
                        self.kind = Some(TimeKind::DateTime);
                        Ok(v)
                    }
                    None => Err(format!(
                        "expected a number or {DATES}, found {}",
                        quote(cell)
                    )),
                }
            }
            Some(TimeKind::Number) => number()?.ok_or_else(|| {
                format!(
                    "expected a number (the column's first time is a number), found {}",
                    quote(cell)
                )
            }),
            Some(_) => match parse_stamp(cell) {
                Some(Stamp::Date(v)) => Ok(v),
                Some(Stamp::DateTime(v)) => {
                    self.kind = Some(TimeKind::DateTime);
                    Ok(v)
                }
                None => Err(format!("expected {DATES}, found {}", quote(cell))),
            },
        }
    }
}

/// Formats a time as the reader parsed it: dates as `YYYY-MM-DD`, date-times as
/// `YYYY-MM-DDTHH:MM:SS` (UTC; a fractional second, if any, follows with up to 6 digits), numbers
/// and indices as the shortest text that parses back to the same `f64` (integers without `.0`).
pub fn format_time(kind: TimeKind, v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    match kind {
        TimeKind::Index | TimeKind::Number => {
            if v == 0.0 {
                "0".into() // not "-0"
            } else {
                format!("{v}")
            }
        }
        TimeKind::Date => {
            let (y, m, d) = civil_from_days((v / DAY).floor() as i64);
            format!("{y:04}-{m:02}-{d:02}")
        }
        TimeKind::DateTime => {
            let mut secs = v.floor() as i64;
            let mut micros = ((v - v.floor()) * 1e6).round() as i64;
            if micros >= 1_000_000 {
                secs += 1;
                micros -= 1_000_000;
            }
            let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
            let s = secs.rem_euclid(86_400);
            let mut out = format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
                s / 3600,
                s / 60 % 60,
                s % 60
            );
            if micros > 0 {
                let f = format!("{micros:06}");
                out.push('.');
                out.push_str(f.trim_end_matches('0'));
            }
            out
        }
    }
}
