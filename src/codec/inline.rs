//! Inline commands (`SET k "a b"\r\n`), as typed into telnet or redis-cli's
//! raw mode, split exactly the way Redis's `sdssplitargs` splits them and
//! re-encoded as a RESP array so that everything downstream sees one form.

use bytes::{BufMut, BytesMut};

use super::ProtocolError;

/// Splits one inline line (without its line ending) into arguments.
pub(super) fn split_args(line: &[u8]) -> Result<Vec<Vec<u8>>, ProtocolError> {
    // Redis treats the line as a C string: it ends at the first NUL.
    let line = match memchr::memchr(0, line) {
        Some(nul) => &line[..nul],
        None => line,
    };
    let mut args = Vec::new();
    let mut p = 0;
    loop {
        while p < line.len() && is_space(line[p]) {
            p += 1;
        }
        if p >= line.len() {
            return Ok(args);
        }
        let mut current = Vec::new();
        let (mut in_double, mut in_single) = (false, false);
        loop {
            let c = line.get(p).copied();
            if in_double {
                match c {
                    None => return Err(ProtocolError::UnbalancedQuotes),
                    Some(b'\\')
                        if line.get(p + 1) == Some(&b'x')
                            && line.get(p + 2).is_some_and(u8::is_ascii_hexdigit)
                            && line.get(p + 3).is_some_and(u8::is_ascii_hexdigit) =>
                    {
                        current.push(hex(line[p + 2]) * 16 + hex(line[p + 3]));
                        p += 3;
                    }
                    Some(b'\\') if p + 1 < line.len() => {
                        p += 1;
                        current.push(match line[p] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 0x08,
                            b'a' => 0x07,
                            other => other,
                        });
                    }
                    Some(b'"') => {
                        // The closing quote must be followed by a space or the end.
                        if line.get(p + 1).is_some_and(|&n| !is_space(n)) {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        p += 1;
                        break;
                    }
                    Some(other) => current.push(other),
                }
            } else if in_single {
                match c {
                    None => return Err(ProtocolError::UnbalancedQuotes),
                    Some(b'\\') if line.get(p + 1) == Some(&b'\'') => {
                        p += 1;
                        current.push(b'\'');
                    }
                    Some(b'\'') => {
                        if line.get(p + 1).is_some_and(|&n| !is_space(n)) {
                            return Err(ProtocolError::UnbalancedQuotes);
                        }
                        p += 1;
                        break;
                    }
                    Some(other) => current.push(other),
                }
            } else {
                match c {
                    None => break,
                    Some(b' ' | b'\n' | b'\r' | b'\t') => break,
                    Some(b'"') => in_double = true,
                    Some(b'\'') => in_single = true,
                    Some(other) => current.push(other),
                }
            }
            p += 1;
        }
        args.push(current);
    }
}

/// Encodes arguments as a RESP array of bulk strings.
pub(crate) fn encode_array<A: AsRef<[u8]>>(args: &[A]) -> BytesMut {
    let size: usize = args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>() + 16;
    let mut out = BytesMut::with_capacity(size);
    out.put_u8(b'*');
    out.put_slice(itoa::Buffer::new().format(args.len()).as_bytes());
    out.put_slice(b"\r\n");
    for arg in args {
        let arg = arg.as_ref();
        out.put_u8(b'$');
        out.put_slice(itoa::Buffer::new().format(arg.len()).as_bytes());
        out.put_slice(b"\r\n");
        out.put_slice(arg);
        out.put_slice(b"\r\n");
    }
    out
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn hex(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Result<Vec<String>, ProtocolError> {
        split_args(s.as_bytes()).map(|v| {
            v.into_iter()
                .map(|a| String::from_utf8_lossy(&a).into_owned())
                .collect()
        })
    }

    #[test]
    fn splits_like_redis() {
        assert_eq!(split("set k v").unwrap(), ["set", "k", "v"]);
        assert_eq!(split("  set   k\t v  ").unwrap(), ["set", "k", "v"]);
        assert_eq!(split(r#"set k "a b""#).unwrap(), ["set", "k", "a b"]);
        assert_eq!(split(r#"set k "a\nb\x41""#).unwrap(), ["set", "k", "a\nbA"]);
        assert_eq!(split(r"set k 'it\'s'").unwrap(), ["set", "k", "it's"]);
        assert_eq!(split(r#"set k """#).unwrap(), ["set", "k", ""]);
        assert!(split("").unwrap().is_empty());
    }

    #[test]
    fn unbalanced_quotes_are_refused() {
        assert_eq!(split(r#"set k "a"#), Err(ProtocolError::UnbalancedQuotes));
        assert_eq!(split(r#"set k "a"b"#), Err(ProtocolError::UnbalancedQuotes));
        assert_eq!(split("set k 'a"), Err(ProtocolError::UnbalancedQuotes));
    }

    #[test]
    fn encodes_resp_arrays() {
        assert_eq!(
            &encode_array(&["GET", "k"])[..],
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"
        );
    }
}
