//! What a provider's response headers say about a route's remaining rate limit: OpenAI's
//! `x-ratelimit-*`, Anthropic's `anthropic-ratelimit-*` and `retry-after`. Parsed once per
//! response (never per chunk) into a small value the quota board reads. Values that do not
//! parse are ignored, never guessed.

use reqwest::header::HeaderMap;
use std::time::Duration;

/// A provider's own account of a route's headroom; resets are absolute (ms since the epoch).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Headroom {
    pub requests_remaining: Option<u64>,
    pub requests_reset_ms: Option<u64>,
    /// The most constraining of the token budgets reported (total, input, output).
    pub tokens_remaining: Option<u64>,
    pub tokens_reset_ms: Option<u64>,
    /// `retry-after` in seconds, as an absolute time.
    pub retry_at_ms: Option<u64>,
}

impl Headroom {
    /// Reads the rate-limit headers of a response received at `now_ms`; `None` when it has none.
    pub fn from_headers(headers: &HeaderMap, now_ms: u64) -> Option<Headroom> {
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
        };
        let count = |name: &str| text(name).and_then(|v| v.parse::<u64>().ok());
        let after = |d: Duration| now_ms.saturating_add(d.as_millis() as u64);
        let relative = |name: &str| text(name).and_then(go_duration).map(after);
        let absolute = |name: &str| text(name).and_then(rfc3339_ms);

        let mut h = Headroom {
            requests_remaining: count("x-ratelimit-remaining-requests"),
            requests_reset_ms: relative("x-ratelimit-reset-requests"),
            tokens_remaining: count("x-ratelimit-remaining-tokens"),
            tokens_reset_ms: relative("x-ratelimit-reset-tokens"),
            retry_at_ms: text("retry-after")
                .and_then(|v| v.parse::<u64>().ok())
                .map(|s| after(Duration::from_secs(s))),
        };
        if let Some(n) = count("anthropic-ratelimit-requests-remaining") {
            h.requests_remaining = Some(n);
            h.requests_reset_ms = absolute("anthropic-ratelimit-requests-reset");
        }
        for family in ["tokens", "input-tokens", "output-tokens"] {
            let remaining = count(&format!("anthropic-ratelimit-{family}-remaining"));
            let Some(n) = remaining else { continue };
            if h.tokens_remaining.is_none_or(|m| n < m) {
                h.tokens_remaining = Some(n);
                h.tokens_reset_ms = absolute(&format!("anthropic-ratelimit-{family}-reset"));
            }
        }
        (h != Headroom::default()).then_some(h)
    }
}

/// A Go-style duration as OpenAI sends it: `1s`, `6m0s`, `20ms`, `1h2m3.5s`.
pub fn go_duration(text: &str) -> Option<Duration> {
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += value * seconds;
    }
    (total.is_finite() && total < 1e9).then(|| Duration::from_secs_f64(total))
}

/// An RFC 3339 timestamp (Anthropic's resets) as ms since the epoch.
fn rfc3339_ms(text: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(text).ok()?;
    t.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000_000;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn go_durations_of_every_shape() {
        assert_eq!(go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(go_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(
            go_duration("1h2m3.5s"),
            Some(Duration::from_millis(3_723_500))
        );
        for garbage in ["", "soon", "5", "1x", "-1s", "1.2.3s"] {
            assert_eq!(go_duration(garbage), None, "{garbage}");
        }
    }

    #[test]
    fn openai_headers() {
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "6m0s"),
            ("x-ratelimit-remaining-tokens", "1500"),
            ("x-ratelimit-reset-tokens", "20ms"),
        ]);
        let r = Headroom::from_headers(&h, NOW).unwrap();
        assert_eq!(r.requests_remaining, Some(0));
        assert_eq!(r.requests_reset_ms, Some(NOW + 360_000));
        assert_eq!(r.tokens_remaining, Some(1500));
        assert_eq!(r.tokens_reset_ms, Some(NOW + 20));
        assert_eq!(r.retry_at_ms, None);
    }

    #[test]
    fn anthropic_headers_take_the_tightest_token_budget() {
        let h = headers(&[
            ("anthropic-ratelimit-requests-remaining", "12"),
            ("anthropic-ratelimit-requests-reset", "2023-11-14T22:13:30Z"),
            ("anthropic-ratelimit-tokens-remaining", "9000"),
            ("anthropic-ratelimit-tokens-reset", "2023-11-14T22:13:40Z"),
            ("anthropic-ratelimit-output-tokens-remaining", "0"),
            (
                "anthropic-ratelimit-output-tokens-reset",
                "2023-11-14T22:13:50Z",
            ),
            ("retry-after", "7"),
        ]);
        let r = Headroom::from_headers(&h, NOW).unwrap();
        assert_eq!(r.requests_remaining, Some(12));
        assert_eq!(r.requests_reset_ms, Some(NOW + 10_000));
        assert_eq!(r.tokens_remaining, Some(0));
        assert_eq!(r.tokens_reset_ms, Some(NOW + 30_000));
        assert_eq!(r.retry_at_ms, Some(NOW + 7_000));
    }

    #[test]
    fn garbage_values_are_ignored() {
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "lots"),
            ("x-ratelimit-reset-requests", "tomorrow"),
            ("anthropic-ratelimit-tokens-remaining", "-3"),
            ("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT"),
        ]);
        assert_eq!(Headroom::from_headers(&h, NOW), None);
        let h = headers(&[
            ("x-ratelimit-remaining-tokens", "10"),
            ("x-ratelimit-reset-tokens", "a while"),
        ]);
        let r = Headroom::from_headers(&h, NOW).unwrap();
        assert_eq!((r.tokens_remaining, r.tokens_reset_ms), (Some(10), None));
        assert_eq!(Headroom::from_headers(&HeaderMap::new(), NOW), None);
    }
}
