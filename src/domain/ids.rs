//! Prefixed ids (`exec_…`, `key_…`) and secrets.

use rand::distributions::Alphanumeric;
use rand::Rng;

/// Random base62 text from the OS-seeded thread RNG (ChaCha, cryptographically secure).
pub fn random_token(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Base62 digits in ASCII order, so fixed-width numbers written with them sort as text.
const SORTABLE_DIGITS: &[u8; 62] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Width of the time prefix: 62^8 ms is about 6,900 years.
const TIME_DIGITS: usize = 8;

/// The Unix time in milliseconds as 8 sortable base62 digits, then `random_len` random ones.
///
/// Tokens made later sort after earlier ones, so the sled trees keyed by them (executions,
/// events, debug logs, idempotency claims) take new entries at their right edge: each insert
/// touches one of a few hot leaves instead of a random leaf of the whole tree, which would
/// have to be paged back in and copied (measured on the gateway benchmark).
pub fn time_ordered_token(random_len: usize) -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut out = String::with_capacity(TIME_DIGITS + random_len);
    let mut digits = [0u8; TIME_DIGITS];
    let mut rest = now_ms;
    for d in digits.iter_mut().rev() {
        *d = SORTABLE_DIGITS[(rest % 62) as usize];
        rest /= 62;
    }
    out.extend(digits.iter().map(|&b| char::from(b)));
    out.push_str(&random_token(random_len));
    out
}

/// `exec_` + 24 characters: time-ordered (see [`time_ordered_token`]) with 95 random bits.
pub fn execution_id() -> String {
    format!("exec_{}", time_ordered_token(16))
}

pub fn key_id() -> String {
    format!("key_{}", random_token(20))
}

/// A fresh API key secret; only its hash is ever stored.
pub fn api_key_secret() -> String {
    format!("sy_{}", random_token(40))
}

pub fn ws_token() -> String {
    format!("wst_{}", random_token(40))
}

/// Whether `name` can be a project id or the name of a structure or workflow: 1 to 64 letters,
/// digits, `_` or `-` (they appear in URLs).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    #[test]
    fn ids_carry_their_prefix_and_differ() {
        let a = super::execution_id();
        let b = super::execution_id();
        assert!(a.starts_with("exec_") && a.len() == 29);
        assert_ne!(a, b);
        assert!(super::key_id().starts_with("key_"));
    }

    #[test]
    fn time_ordered_tokens_sort_by_creation() {
        let earlier = super::time_ordered_token(16);
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = super::time_ordered_token(16);
        assert_eq!(earlier.len(), 24);
        assert!(earlier < later, "{earlier} !< {later}");
        assert!(earlier.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
