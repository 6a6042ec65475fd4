//! Reading a subject distinguished name as RFC 4514 writes it
//! (`CN=dev-1,O=Acme\, Inc.`): attribute types and unescaped values.

/// The `(type, value)` pairs of a DN in the order written, multi-valued
/// RDNs (`+`) flattened. Types are as written (`CN`, `O`, or a dotted OID).
pub fn attributes(dn: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut chars = dn.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                // Keep the escape for `split_pair`; the value is unescaped there.
                current.push('\\');
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            ',' | '+' => {
                out.extend(split_pair(&current));
                current.clear();
            }
            _ => current.push(c),
        }
    }
    out.extend(split_pair(&current));
    out
}

fn split_pair(raw: &str) -> Option<(String, String)> {
    let (kind, value) = raw.split_once('=')?;
    Some((kind.trim().to_owned(), unescape(value.trim_start())))
}

/// Undoes RFC 4514 escapes: `\,` and friends, and `\HH` hex pairs (which
/// together spell UTF-8).
fn unescape(value: &str) -> String {
    let mut bytes = Vec::with_capacity(value.len());
    let raw = value.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\\' && i + 1 < raw.len() {
            let hex = raw.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            if let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                bytes.push(byte);
                i += 3;
            } else {
                bytes.push(raw[i + 1]);
                i += 2;
            }
        } else {
            bytes.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(dn: &str) -> Vec<(String, String)> {
        attributes(dn)
    }

    #[test]
    fn reads_types_and_unescaped_values() {
        assert_eq!(
            pairs("CN=dev-1,O=Acme\\, Inc.,OU=a+OU=b"),
            [("CN", "dev-1"), ("O", "Acme, Inc."), ("OU", "a"), ("OU", "b")].map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
        assert_eq!(pairs("CN=caf\\C3\\A9"), [("CN".to_owned(), "café".to_owned())]);
        assert_eq!(pairs("2.5.4.5=123, CN=x"), [("2.5.4.5", "123"), ("CN", "x")].map(|(k, v)| (k.into(), v.into())));
        assert!(pairs("").is_empty());
        assert_eq!(pairs("CN=a\\=b"), [("CN".to_owned(), "a=b".to_owned())]);
    }
}
