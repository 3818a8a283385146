//! What tokens cost on a route, and how much a submit holds.
//!
//! Prices are USD per million tokens, balances integer micro-dollars: one token at
//! `p` USD/Mtok costs exactly `p` micro-dollars, so a cost is `tokens × price`, rounded up to a
//! whole micro-dollar (never in the client's favour by more than one).

use crate::domain::Usage;
use crate::settings::RouteSettings;

/// Output tokens reserved for a request without `max_tokens` on a route without
/// `max_output_tokens`.
pub const DEFAULT_OUTPUT_RESERVE: u64 = 4_096;
/// The smallest hold: $0.01.
pub const MIN_HOLD_MICROS: u64 = 10_000;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
    /// The route's own cap on an answer: what a request without `max_tokens` reserves.
    pub max_output_tokens: Option<u32>,
}

impl Price {
    pub fn of(route: &RouteSettings) -> Price {
        Price {
            input_per_mtok: route.input_per_mtok,
            output_per_mtok: route.output_per_mtok,
            max_output_tokens: route.max_output_tokens,
        }
    }

    pub fn is_free(&self) -> bool {
        self.input_per_mtok == 0.0 && self.output_per_mtok == 0.0
    }

    /// Micro-dollars for `input` prompt and `output` completion tokens, rounded up.
    pub fn cost_micros(&self, input: u64, output: u64) -> u64 {
        let usd_micro = input as f64 * self.input_per_mtok + output as f64 * self.output_per_mtok;
        usd_micro.ceil() as u64
    }

    pub fn usage_cost(&self, usage: &Usage) -> u64 {
        self.cost_micros(usage.prompt_tokens, usage.completion_tokens)
    }

    /// The most a request of `prompt_tokens` may cost here: its `max_tokens`, else the
    /// route's cap, else [`DEFAULT_OUTPUT_RESERVE`].
    pub fn worst_case_micros(&self, prompt_tokens: u64, max_tokens: Option<u32>) -> u64 {
        let output = max_tokens
            .or(self.max_output_tokens)
            .map_or(DEFAULT_OUTPUT_RESERVE, u64::from);
        self.cost_micros(prompt_tokens, output)
    }
}

/// The hold for an estimate: 1.2 × the estimate (rounded up), at least [`MIN_HOLD_MICROS`].
pub fn hold_for(estimate_micros: u64) -> u64 {
    estimate_micros
        .saturating_mul(6)
        .div_ceil(5)
        .max(MIN_HOLD_MICROS)
}

/// Whole tokens in `bytes` of text, by the same rough measure as admission (4 bytes a token),
/// for an attempt whose provider reported no usage.
pub fn approx_tokens(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINI: Price = Price {
        input_per_mtok: 0.15,
        output_per_mtok: 0.6,
        max_output_tokens: None,
    };

    #[test]
    fn a_token_at_p_per_million_costs_p_micros() {
        assert_eq!(MINI.cost_micros(1_000_000, 0), 150_000);
        assert_eq!(MINI.cost_micros(1_000, 1_000), 750);
        // 0.15 + 0.6 = 0.75 micros: rounded up to 1.
        assert_eq!(MINI.cost_micros(1, 1), 1);
        assert_eq!(Price::default().cost_micros(1_000, 1_000), 0);
    }

    #[test]
    fn the_worst_case_reserves_max_tokens_then_the_route_cap_then_the_default() {
        assert_eq!(MINI.worst_case_micros(0, Some(100)), 60);
        let capped = Price {
            max_output_tokens: Some(1_000),
            ..MINI
        };
        assert_eq!(capped.worst_case_micros(0, None), 600);
        assert_eq!(MINI.worst_case_micros(0, None), 2_458);
    }

    #[test]
    fn a_hold_is_a_fifth_more_and_at_least_a_cent() {
        assert_eq!(hold_for(0), 10_000);
        assert_eq!(hold_for(100_000), 120_000);
        assert_eq!(hold_for(100_001), 120_002);
        assert_eq!(hold_for(u64::MAX), u64::MAX / 5);
    }
}
