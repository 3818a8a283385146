//! `route_days` (provider ‖ 0 ‖ upstream model → that route's use in one UTC day): the upstream
//! daily quota counters, so a restart does not hand a provider a fresh day's requests. Written
//! in batches by a timer (see `startup`), never per request: a crash loses at most the last
//! interval's counts.

use serde::{Deserialize, Serialize};

use super::{joined, Store};

/// One route's use in one UTC day (`day` counts days since the epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteDay {
    pub provider: String,
    pub model: String,
    pub day: u64,
    pub requests: u64,
    pub tokens: u64,
}

#[derive(Serialize, Deserialize)]
struct Counts {
    day: u64,
    requests: u64,
    tokens: u64,
}

impl Store {
    /// Replaces the saved counters of these routes in one batch.
    pub fn save_route_days(&self, days: &[RouteDay]) -> sled::Result<()> {
        let mut batch = sled::Batch::default();
        for d in days {
            let counts = Counts {
                day: d.day,
                requests: d.requests,
                tokens: d.tokens,
            };
            let value = serde_json::to_vec(&counts).expect("counts serialize");
            batch.insert(joined(&d.provider, d.model.as_bytes()), value);
        }
        self.route_days.apply_batch(batch)
    }

    /// Every saved route's counters (unreadable entries are skipped).
    pub fn load_route_days(&self) -> sled::Result<Vec<RouteDay>> {
        let mut out = Vec::new();
        for entry in self.route_days.iter() {
            let (key, value) = entry?;
            let Some(split) = key.iter().position(|&b| b == 0) else {
                continue;
            };
            let Ok(c) = serde_json::from_slice::<Counts>(&value) else {
                continue;
            };
            out.push(RouteDay {
                provider: String::from_utf8_lossy(&key[..split]).into_owned(),
                model: String::from_utf8_lossy(&key[split + 1..]).into_owned(),
                day: c.day,
                requests: c.requests,
                tokens: c.tokens,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn saved_days_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let day = |model: &str, requests| RouteDay {
            provider: "p".into(),
            model: model.into(),
            day: 19_675,
            requests,
            tokens: 10,
        };
        store
            .save_route_days(&[day("a", 1), day("b:x", 2)])
            .unwrap();
        store.save_route_days(&[day("a", 3)]).unwrap();
        let mut loaded = store.load_route_days().unwrap();
        loaded.sort_by(|x, y| x.model.cmp(&y.model));
        assert_eq!(loaded, vec![day("a", 3), day("b:x", 2)]);
    }
}
