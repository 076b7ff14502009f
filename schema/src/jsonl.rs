//! JSON Lines helpers: one value per line, errors that name the line.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::io::{self, BufRead, Write};

/// A line that could not be read or parsed; `line` counts from 1.
#[derive(Debug)]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for LineError {}

/// Write `value` as one compact JSON line (with the trailing newline).
pub fn write_line<W: Write, T: Serialize>(mut w: W, value: &T) -> io::Result<()> {
    let mut buf = serde_json::to_vec(value).map_err(io::Error::other)?;
    buf.push(b'\n');
    w.write_all(&buf)
}

/// Iterate over the values of a JSONL stream. Blank lines are skipped; so is a final
/// line without a newline that does not parse (a write cut short by a crash), which is
/// reported through [`Lines::truncated_tail`] instead of as an error.
pub fn read<T: DeserializeOwned, R: BufRead>(reader: R) -> Lines<T, R> {
    Lines {
        reader,
        line: 0,
        buf: String::new(),
        truncated_tail: false,
        _t: std::marker::PhantomData,
    }
}

pub struct Lines<T, R> {
    reader: R,
    line: usize,
    buf: String,
    truncated_tail: bool,
    _t: std::marker::PhantomData<T>,
}

impl<T, R> Lines<T, R> {
    /// True when the stream ended in an unterminated, unparsable line (a torn write).
    pub fn truncated_tail(&self) -> bool {
        self.truncated_tail
    }
}

impl<T: DeserializeOwned, R: BufRead> Iterator for Lines<T, R> {
    type Item = Result<T, LineError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.buf.clear();
            self.line += 1;
            match self.reader.read_line(&mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => {
                    return Some(Err(LineError {
                        line: self.line,
                        message: e.to_string(),
                    }))
                }
            }
            let complete = self.buf.ends_with('\n');
            let text = self.buf.trim();
            if text.is_empty() {
                continue;
            }
            return match serde_json::from_str::<T>(text) {
                Ok(v) => Some(Ok(v)),
                Err(_) if !complete => {
                    self.truncated_tail = true;
                    None
                }
                Err(e) => Some(Err(LineError {
                    line: self.line,
                    message: e.to_string(),
                })),
            };
        }
    }
}

/// Read every value, failing on the first bad line.
pub fn read_all<T: DeserializeOwned, R: BufRead>(reader: R) -> Result<Vec<T>, LineError> {
    read(reader).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_bad_line() {
        let data = "1\n2\n\nnope\n4\n";
        let err = read_all::<u32, _>(data.as_bytes()).unwrap_err();
        assert_eq!(err.line, 4);
    }

    #[test]
    fn torn_tail_is_not_an_error() {
        let data = "1\n2\n{\"a\":";
        let mut it = read::<u32, _>(data.as_bytes());
        assert_eq!(it.next().unwrap().unwrap(), 1);
        assert_eq!(it.next().unwrap().unwrap(), 2);
        assert!(it.next().is_none());
        assert!(it.truncated_tail());
    }

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        write_line(&mut out, &vec![1, 2]).unwrap();
        write_line(&mut out, &vec![3]).unwrap();
        let back: Vec<Vec<u32>> = read_all(out.as_slice()).unwrap();
        assert_eq!(back, vec![vec![1, 2], vec![3]]);
    }
}
