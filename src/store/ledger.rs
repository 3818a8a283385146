//! Balances in sled: the append-only `ledger`, the `holds` still open, and each key's spend per
//! calendar month (`key_spend`). `crate::ledger` decides; this file only keeps.
//!
//! No sled transactions (see `executions.rs`). Each entry of a project's ledger carries the
//! project's balance and held amount after it, so the newest entry *is* the account and one
//! insert changes it atomically. The other writes are ordered so that recovery can finish
//! whatever a crash interrupts (sled's log is durable as a prefix: a later write that survived
//! implies every earlier one did):
//! - a hold writes its `holds` row (naming the ledger seq it will take), then the ledger
//!   entry; a row whose entry is missing is completed at start ([`Store::ledger_entry`]);
//! - a settle or release writes the terminal record (the actor), then the ledger entry, then
//!   the key's month, then removes the `holds` row; an open row whose execution is terminal is
//!   settled at start unless the ledger already has its closing entry
//!   ([`Store::closing_entry`]).
//!
//! Keys: `ledger` project ‖ 0 ‖ seq BE; `holds` execution id; `key_spend` key id ‖ 0 ‖ month
//! (`YYYYMM` BE u32).

use serde::{Deserialize, Serialize};

use super::{joined, Store};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    TopUp,
    Hold,
    Settle,
    Release,
}

/// One line of a project's ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub seq: u64,
    pub kind: EntryKind,
    /// Top-up: added; hold: reserved; settle: charged; release: the hold given back.
    pub amount_micros: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Settle: the hold it closes (0 for a charge without a hold, e.g. embeddings).
    #[serde(default)]
    pub hold_micros: u64,
    /// Settle: what the answer cost beyond what the balance could pay (never charged).
    #[serde(default)]
    pub uncollected_micros: u64,
    pub at_ms: u64,
    /// The account after this entry.
    pub balance_micros: u64,
    pub held_micros: u64,
}

/// A hold not yet settled or released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRecord {
    pub project_id: String,
    pub key_id: String,
    pub amount_micros: u64,
    pub at_ms: u64,
    /// The ledger entry that placed it; `None` for a project without a balance (the hold only
    /// counts against the key's monthly cap).
    pub seq: Option<u64>,
}

fn ledger_key(project: &str, seq: u64) -> Vec<u8> {
    joined(project, &seq.to_be_bytes())
}

fn spend_key(key_id: &str, month: u32) -> Vec<u8> {
    joined(key_id, &month.to_be_bytes())
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> sled::Error {
    sled::Error::Unsupported(format!("corrupt {what}: {e}"))
}

fn decode_entry(bytes: &[u8]) -> sled::Result<LedgerEntry> {
    serde_json::from_slice(bytes).map_err(|e| corrupt("ledger entry", e))
}

impl Store {
    /// Appends `entry` to its project's ledger (its `seq` decides the place).
    pub fn append_ledger(&self, project: &str, entry: &LedgerEntry) -> sled::Result<()> {
        let value = serde_json::to_vec(entry).expect("ledger entries serialize");
        self.ledger.insert(ledger_key(project, entry.seq), value)?;
        Ok(())
    }

    /// The newest entry of every project that has a ledger: the accounts.
    pub fn ledger_accounts(&self) -> sled::Result<Vec<(String, LedgerEntry)>> {
        let mut accounts = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        // One probe per project: the last key under its prefix, then skip past the prefix.
        while let Some((key, _)) = self.ledger.range(from.as_slice()..).next().transpose()? {
            let Some(end) = key.iter().position(|&b| b == 0) else {
                return Err(corrupt("ledger key", "no separator"));
            };
            let project = String::from_utf8_lossy(&key[..end]).into_owned();
            let mut next = key[..end].to_vec();
            next.push(1);
            let last = self
                .ledger
                .range(key[..=end].to_vec()..next.clone())
                .next_back()
                .transpose()?
                .expect("the prefix has the key just read");
            accounts.push((project, decode_entry(&last.1)?));
            from = next;
        }
        Ok(accounts)
    }

    pub fn ledger_entry(&self, project: &str, seq: u64) -> sled::Result<Option<LedgerEntry>> {
        self.ledger
            .get(ledger_key(project, seq))?
            .map(|v| decode_entry(&v))
            .transpose()
    }

    /// The settle or release of `execution_id` written after seq `after`, if any.
    pub fn closing_entry(
        &self,
        project: &str,
        after: u64,
        execution_id: &str,
    ) -> sled::Result<Option<LedgerEntry>> {
        let start = ledger_key(project, after + 1);
        let end = joined(project, &[0xff; 9]);
        for item in self.ledger.range(start..end) {
            let entry = decode_entry(&item?.1)?;
            if matches!(entry.kind, EntryKind::Settle | EntryKind::Release)
                && entry.execution_id.as_deref() == Some(execution_id)
            {
                return Ok(Some(entry));
            }
        }
        Ok(None)
    }

    /// Up to `limit` entries after seq `after` (newest last), and whether more follow.
    pub fn ledger_page(
        &self,
        project: &str,
        after: Option<u64>,
        limit: usize,
    ) -> sled::Result<(Vec<LedgerEntry>, bool)> {
        let start = ledger_key(project, after.map_or(0, |s| s + 1));
        let end = joined(project, &[0xff; 9]);
        let mut entries = Vec::with_capacity(limit);
        for item in self.ledger.range(start..end) {
            if entries.len() == limit {
                return Ok((entries, true));
            }
            entries.push(decode_entry(&item?.1)?);
        }
        Ok((entries, false))
    }

    pub fn put_hold(&self, execution_id: &str, hold: &HoldRecord) -> sled::Result<()> {
        let value = serde_json::to_vec(hold).expect("holds serialize");
        self.holds.insert(execution_id.as_bytes(), value)?;
        Ok(())
    }

    pub fn hold(&self, execution_id: &str) -> sled::Result<Option<HoldRecord>> {
        self.holds
            .get(execution_id.as_bytes())?
            .map(|v| serde_json::from_slice(&v).map_err(|e| corrupt("hold", e)))
            .transpose()
    }

    pub fn remove_hold(&self, execution_id: &str) -> sled::Result<()> {
        self.holds.remove(execution_id.as_bytes())?;
        Ok(())
    }

    /// Every open hold, by execution id.
    pub fn open_holds(&self) -> sled::Result<Vec<(String, HoldRecord)>> {
        self.holds
            .iter()
            .map(|item| {
                let (k, v) = item?;
                let hold = serde_json::from_slice(&v).map_err(|e| corrupt("hold", e))?;
                Ok((String::from_utf8_lossy(&k).into_owned(), hold))
            })
            .collect()
    }

    /// What `key_id` was charged in `month` (`YYYYMM`).
    pub fn key_spend(&self, key_id: &str, month: u32) -> sled::Result<u64> {
        Ok(self
            .key_spend
            .get(spend_key(key_id, month))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    pub fn put_key_spend(&self, key_id: &str, month: u32, micros: u64) -> sled::Result<()> {
        self.key_spend
            .insert(spend_key(key_id, month), &micros.to_be_bytes())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, kind: EntryKind, amount: u64, exec: Option<&str>) -> LedgerEntry {
        LedgerEntry {
            seq,
            kind,
            amount_micros: amount,
            execution_id: exec.map(String::from),
            key_id: None,
            hold_micros: 0,
            uncollected_micros: 0,
            at_ms: 1,
            balance_micros: 0,
            held_micros: 0,
        }
    }

    #[tokio::test]
    async fn accounts_are_the_newest_entry_of_each_project() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (project, seq) in [("a", 1), ("a", 2), ("ab", 1), ("b", 1), ("b", 2), ("b", 3)] {
            store
                .append_ledger(project, &entry(seq, EntryKind::TopUp, seq, None))
                .unwrap();
        }
        let accounts: Vec<(String, u64)> = store
            .ledger_accounts()
            .unwrap()
            .into_iter()
            .map(|(p, e)| (p, e.seq))
            .collect();
        assert_eq!(
            accounts,
            [("a".into(), 2), ("ab".into(), 1), ("b".into(), 3)]
        );
        let (page, more) = store.ledger_page("b", Some(1), 1).unwrap();
        assert_eq!((page[0].seq, more), (2, true));
        let (page, more) = store.ledger_page("b", Some(2), 5).unwrap();
        assert_eq!((page.len(), more), (1, false));
    }

    #[tokio::test]
    async fn the_closing_entry_is_found_after_the_hold() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .append_ledger("p", &entry(1, EntryKind::Hold, 10, Some("e1")))
            .unwrap();
        assert_eq!(store.closing_entry("p", 1, "e1").unwrap(), None);
        store
            .append_ledger("p", &entry(2, EntryKind::Hold, 10, Some("e2")))
            .unwrap();
        store
            .append_ledger("p", &entry(3, EntryKind::Release, 10, Some("e1")))
            .unwrap();
        assert_eq!(store.closing_entry("p", 1, "e1").unwrap().unwrap().seq, 3);
        assert_eq!(store.closing_entry("p", 2, "e2").unwrap(), None);
    }
}
