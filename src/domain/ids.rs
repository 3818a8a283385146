//! Prefixed random ids (`exec_…`, `key_…`) and secrets.

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

pub fn execution_id() -> String {
    format!("exec_{}", random_token(24))
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
}
