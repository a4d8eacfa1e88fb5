//! Damage to valid bytes, for the property tests that feed every decoder of untrusted
//! bytes (block files and replies, journal and log records, records from peer regions)
//! with what a bad disk, a broken peer or an attacker could hand it. Random bytes rarely
//! get past a decoder's first check; a valid encoding with a few edits reaches the
//! length fields, tables and bodies behind it.

/// `bytes` with each edit applied in turn: `(at, kind, byte)`, where `at` is taken modulo
/// the length (plus one), and `kind` modulo 4 picks overwrite with `byte`, insert `byte`,
/// delete, or cut everything from `at` on.
pub fn mutate(bytes: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for &(at, kind, byte) in edits {
        let at = at % (out.len() + 1);
        match kind % 4 {
            0 if at < out.len() => out[at] = byte,
            0 => out.push(byte),
            1 => out.insert(at, byte),
            2 if at < out.len() => {
                out.remove(at);
            }
            2 => {}
            _ => out.truncate(at),
        }
    }
    out
}

/// How many cases a fuzz target runs: `default`, or `PROPTEST_CASES` when it is set (to
/// run the targets longer by hand: `PROPTEST_CASES=100000 cargo nextest run damaged`).
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_edit() {
        let b = b"abcd";
        assert_eq!(mutate(b, &[(1, 0, b'X')]), b"aXcd");
        assert_eq!(mutate(b, &[(1, 1, b'X')]), b"aXbcd");
        assert_eq!(mutate(b, &[(1, 2, 0)]), b"acd");
        assert_eq!(mutate(b, &[(1, 3, 0)]), b"a");
        assert_eq!(mutate(b, &[(9, 0, b'X')]), b"abcdX", "9 % 5 = 4: the end");
        assert_eq!(mutate(b, &[]), b);
    }
}
