//! Balances with holds: each project may have a balance in micro-dollars; a submit holds
//! what its answer may cost, the end of the execution settles the hold to what it did cost
//! (`completed`) or gives it back (any other end). A project without a balance is
//! unlimited. A key may also have a monthly spend cap, enforced the same way.
//!
//! Exact under concurrency: the check and the hold happen under the project's lock (and the
//! key's, always taken after it), against the balance minus every open hold — including
//! holds reserved by submits not yet written — so N parallel submits against a balance that
//! covers k of them accept at most k. A charge is never more than the balance can pay (what
//! exceeds it is recorded as uncollected), so no balance goes below zero.
//!
//! Crash-safe through the order of writes described in `store::ledger`; [`Ledger::open`]
//! finishes whatever a crash interrupted. The ledger in sled is the truth; what is held here is
//! its newest entry per project, read once at start.

pub mod pricing;

use dashmap::DashMap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::domain::{now_ms, ExecutionRecord, Status};
use crate::store::{EntryKind, HoldRecord, LedgerEntry, Store};

/// Why a submit was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Balance { available: u64, needed: u64 },
    KeyCap { cap: u64, used: u64, needed: u64 },
}

impl Refusal {
    pub fn message(&self) -> String {
        let usd = |m: u64| format!("${}.{:06}", m / 1_000_000, m % 1_000_000);
        match self {
            Refusal::Balance { available, needed } => format!(
                "insufficient balance: this request holds up to {} (its worst-case cost + 20%), the project has {} available",
                usd(*needed),
                usd(*available)
            ),
            Refusal::KeyCap { cap, used, needed } => format!(
                "this key's monthly spend cap ({}) would be exceeded: {} spent or held this month, this request holds up to {}",
                usd(*cap),
                usd(*used),
                usd(*needed)
            ),
        }
    }
}

/// A project's account: its newest ledger entry, plus holds reserved but not yet written.
#[derive(Debug, Default)]
struct Account {
    seq: u64,
    balance: u64,
    held: u64,
    reserved: u64,
}

impl Account {
    fn available(&self) -> u64 {
        self.balance.saturating_sub(self.held + self.reserved)
    }

    fn next(&self, kind: EntryKind, amount: u64, balance: u64, held: u64) -> LedgerEntry {
        LedgerEntry::next_after(self.seq, kind, amount, balance, held)
    }

    fn apply(&mut self, entry: &LedgerEntry) {
        self.seq = entry.seq;
        self.balance = entry.balance_micros;
        self.held = entry.held_micros;
    }
}

/// A key's spend in one calendar month (UTC), and its open holds.
#[derive(Debug, Default)]
struct KeyMonth {
    month: u32,
    spent: u64,
    held: u64,
}

/// What `GET /v1/balance` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Balance {
    pub balance_micros: u64,
    pub held_micros: u64,
    pub available_micros: u64,
}

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How far back from a ledger's last entry [`Ledger::open`] looks for holds left open: the
/// longest an execution may run (`limits.max_execution_ms`), plus ten minutes for clock steps
/// and the time an execution waits before its deadline is noticed.
pub fn recovery_window(max_execution_ms: u64) -> std::time::Duration {
    std::time::Duration::from_millis(max_execution_ms.saturating_add(10 * 60 * 1000))
}

/// `YYYYMM` of a time, in UTC.
pub fn month_of(ms: u64) -> u32 {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    let text = humantime::format_rfc3339_seconds(t).to_string();
    let year: u32 = text[..4].parse().unwrap_or(1970);
    let month: u32 = text[5..7].parse().unwrap_or(1);
    year * 100 + month
}

pub struct Ledger {
    store: Store,
    accounts: DashMap<String, Shared<Account>>,
    keys: DashMap<String, Shared<KeyMonth>>,
    /// The open holds: durable as their ledger entries, read back from the ledger's tail at
    /// start (see [`Ledger::open`]); a settle reads no sled.
    holds: DashMap<String, HoldRecord>,
    /// Keys with a monthly spend cap: only their spend is counted and written.
    capped: DashMap<String, ()>,
    /// In a cluster, project balances and keys' monthly spend live in the shared ledger
    /// (`cluster::ledger`): this one only keeps the mirrored accounts for reads.
    shared: bool,
}

/// A hold checked and counted, not yet written: dropped unwritten (the submit failed, or lost
/// an idempotency race), it gives the amount back.
pub struct Reservation {
    project_id: String,
    key_id: String,
    amount: u64,
    account: Option<Shared<Account>>,
    key: Option<Shared<KeyMonth>>,
    written: bool,
}

impl Reservation {
    pub fn amount(&self) -> u64 {
        self.amount
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.written {
            return;
        }
        if let Some(account) = &self.account {
            let mut a = lock(account);
            a.reserved = a.reserved.saturating_sub(self.amount);
        }
        if let Some(key) = &self.key {
            let mut k = lock(key);
            k.held = k.held.saturating_sub(self.amount);
        }
    }
}

impl Ledger {
    /// Loads the accounts and finishes what a crash interrupted. The open holds are read back
    /// from each ledger's tail: every hold a crash can have left open was placed within
    /// `window` (the longest an execution may run, plus a margin) before the ledger's last
    /// entry, since its execution was still running then. A hold without its settle or release
    /// whose execution ended (or was never written) is settled or released now; one whose
    /// execution is unfinished stays open for the resumed execution. Holds of projects
    /// without a balance only counted against a key's monthly cap: they are rebuilt from the
    /// unfinished executions' records.
    pub fn open(store: Store, window: std::time::Duration) -> sled::Result<Ledger> {
        Ledger::open_as(store, window, false)
    }

    /// The ledger of a cluster node: project balances are the shared ledger's (mirrored into
    /// the local one, which this node never appends to itself); holds are closed through it.
    pub fn open_shared(store: Store) -> sled::Result<Ledger> {
        Ledger::open_as(store, std::time::Duration::ZERO, true)
    }

    fn open_as(store: Store, window: std::time::Duration, shared: bool) -> sled::Result<Ledger> {
        let ledger = Ledger {
            accounts: DashMap::new(),
            keys: DashMap::new(),
            holds: DashMap::new(),
            capped: DashMap::new(),
            store,
            shared,
        };
        for (key_id, limits) in ledger.store.key_limit_overrides()? {
            if limits.monthly_spend_cap_micros.is_some_and(|c| c > 0) {
                ledger.capped.insert(key_id, ());
            }
        }
        let accounts = ledger.store.ledger_accounts()?;
        if shared {
            for (project, last) in &accounts {
                ledger.apply_shared(project, last);
            }
            return Ok(ledger);
        }
        for (project, last) in &accounts {
            let mut account = Account::default();
            account.apply(last);
            ledger
                .accounts
                .insert(project.clone(), Arc::new(Mutex::new(account)));
        }
        let window_ms = window.as_millis() as u64;
        for (project, last) in &accounts {
            let since = last.at_ms.saturating_sub(window_ms);
            let mut open: HashMap<String, LedgerEntry> = HashMap::new();
            for entry in ledger.store.ledger_tail(project, since)? {
                let Some(id) = entry.execution_id.clone() else {
                    continue;
                };
                match entry.kind {
                    EntryKind::Hold => {
                        open.insert(id, entry);
                    }
                    EntryKind::Settle | EntryKind::Release => {
                        open.remove(&id);
                    }
                    EntryKind::TopUp => {}
                }
            }
            for (id, entry) in open {
                let hold = HoldRecord {
                    project_id: project.clone(),
                    key_id: entry.key_id.clone().unwrap_or_default(),
                    amount_micros: entry.amount_micros,
                    seq: Some(entry.seq),
                };
                match ledger.store.get_execution(&id)? {
                    Some(r) if !r.status.is_terminal() => {
                        ledger.holds.insert(id, hold);
                    }
                    Some(r) => {
                        tracing::info!(execution_id = %id, status = r.status.as_str(), "settling the hold of an execution that ended before the crash");
                        ledger.close(&id, &hold, settled_cost(&r))?;
                    }
                    None => {
                        tracing::info!(execution_id = %id, "releasing the hold of an execution a crash left unwritten");
                        ledger.close(&id, &hold, None)?;
                    }
                }
            }
        }
        for record in ledger.store.unfinished_executions()? {
            let held = record.cost.map_or(0, |c| c.held_micros);
            let key_id = record.key_id.clone().unwrap_or_default();
            if held == 0
                || ledger.holds.contains_key(&record.id)
                || ledger.is_limited(&record.project_id)
            {
                continue;
            }
            let hold = HoldRecord {
                project_id: record.project_id.clone(),
                key_id,
                amount_micros: held,
                seq: None,
            };
            ledger.holds.insert(record.id.clone(), hold);
        }
        let mut held_by_key: HashMap<String, u64> = HashMap::new();
        for h in ledger.holds.iter() {
            if ledger.capped.contains_key(&h.key_id) {
                *held_by_key.entry(h.key_id.clone()).or_default() += h.amount_micros;
            }
        }
        let month = month_of(now_ms());
        for (key_id, held) in held_by_key {
            let spent = ledger.store.key_spend(&key_id, month)?;
            ledger.keys.insert(
                key_id,
                Arc::new(Mutex::new(KeyMonth { month, spent, held })),
            );
        }
        Ok(ledger)
    }

    fn account(&self, project: &str) -> Shared<Account> {
        self.accounts
            .entry(project.to_string())
            .or_default()
            .clone()
    }

    fn key_month(&self, key_id: &str, month: u32) -> sled::Result<Shared<KeyMonth>> {
        if let Some(k) = self.keys.get(key_id) {
            return Ok(k.clone());
        }
        let spent = self.store.key_spend(key_id, month)?;
        Ok(self
            .keys
            .entry(key_id.to_string())
            .or_insert_with(|| {
                Arc::new(Mutex::new(KeyMonth {
                    month,
                    spent,
                    held: 0,
                }))
            })
            .clone())
    }

    /// Whether project balances are the cluster's shared ledger's.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// An entry of the shared ledger, as the mirror brings it: the cached account follows.
    pub fn apply_shared(&self, project: &str, entry: &LedgerEntry) {
        let account = self.account(project);
        let mut a = lock(&account);
        if entry.seq > a.seq {
            a.apply(entry);
        }
    }

    /// A key's monthly cap was set or lifted: its spend is counted from now on while it has one
    /// (spend before a cap was set is not known to it).
    pub fn set_capped(&self, key_id: &str, capped: bool) {
        if capped {
            self.capped.insert(key_id.to_string(), ());
        } else {
            self.capped.remove(key_id);
        }
    }

    /// Whether the project has a balance (else it is unlimited).
    pub fn is_limited(&self, project: &str) -> bool {
        self.accounts.contains_key(project)
    }

    pub fn balance(&self, project: &str) -> Option<Balance> {
        let account = self.accounts.get(project)?.clone();
        let a = lock(&account);
        Some(Balance {
            balance_micros: a.balance,
            held_micros: a.held + a.reserved,
            available_micros: a.available(),
        })
    }

    /// Checks and counts a hold of `amount` against the project's balance and the key's
    /// monthly cap. `Ok(None)`: neither applies, nothing is held.
    pub fn reserve(
        &self,
        project: &str,
        key_id: &str,
        monthly_cap: Option<u64>,
        amount: u64,
    ) -> Result<Option<Reservation>, ReserveError> {
        if self.shared {
            // Balances and keys' monthly caps are held by `cluster::ledger`.
            return Ok(None);
        }
        let account = self.accounts.get(project).map(|a| a.clone());
        let cap = monthly_cap.filter(|&c| c > 0);
        if account.is_none() && cap.is_none() {
            return Ok(None);
        }
        let mut account_guard = account.as_ref().map(|a| lock(a));
        if let Some(a) = account_guard.as_deref() {
            if a.available() < amount {
                return Err(ReserveError::Refused(Refusal::Balance {
                    available: a.available(),
                    needed: amount,
                }));
            }
        }
        let key = match cap {
            Some(cap) => {
                let month = month_of(now_ms());
                let key = self.key_month(key_id, month)?;
                let mut k = lock(&key);
                if k.month != month {
                    k.month = month;
                    k.spent = self.store.key_spend(key_id, month)?;
                }
                let used = k.spent + k.held;
                if used.saturating_add(amount) > cap {
                    return Err(ReserveError::Refused(Refusal::KeyCap {
                        cap,
                        used,
                        needed: amount,
                    }));
                }
                k.held += amount;
                drop(k);
                Some(key)
            }
            None => None,
        };
        if let Some(a) = account_guard.as_deref_mut() {
            a.reserved += amount;
        }
        drop(account_guard);
        Ok(Some(Reservation {
            project_id: project.to_string(),
            key_id: key_id.to_string(),
            amount,
            account,
            key,
            written: false,
        }))
    }

    /// Writes a reservation as the hold of `execution_id`: its ledger entry (for a project with
    /// a balance), and the open hold in memory.
    pub fn hold(&self, reservation: &mut Reservation, execution_id: &str) -> sled::Result<()> {
        let mut row = HoldRecord {
            project_id: reservation.project_id.clone(),
            key_id: reservation.key_id.clone(),
            amount_micros: reservation.amount,
            seq: None,
        };
        let Some(account) = &reservation.account else {
            // Only the key's cap counts it: nothing in a ledger (see `Ledger::open`).
            self.holds.insert(execution_id.to_string(), row);
            reservation.written = true;
            return Ok(());
        };
        let mut a = lock(account);
        let mut entry = a.next(
            EntryKind::Hold,
            reservation.amount,
            a.balance,
            a.held + reservation.amount,
        );
        entry.execution_id = Some(execution_id.to_string());
        entry.key_id = Some(reservation.key_id.clone());
        row.seq = Some(entry.seq);
        self.store.append_ledger(&reservation.project_id, &entry)?;
        self.holds.insert(execution_id.to_string(), row);
        a.apply(&entry);
        a.reserved = a.reserved.saturating_sub(reservation.amount);
        reservation.written = true;
        Ok(())
    }

    /// Ends an execution's hold: charges `cost` (what a `completed` answer cost; `None` for
    /// any other end, which releases the hold whole). An execution without a hold is charged
    /// directly (a submit a crash cut between its record and its hold). Returns the amount
    /// charged.
    pub fn settle(
        &self,
        execution_id: &str,
        project: &str,
        key_id: &str,
        cost: Option<u64>,
    ) -> sled::Result<u64> {
        if self.shared {
            // Closed in the shared ledger (`cluster::ledger`), once, by whichever node.
            return Ok(cost.unwrap_or(0));
        }
        match self.holds.remove(execution_id) {
            Some((_, hold)) => self.close(execution_id, &hold, cost),
            None => self.charge_direct(Some(execution_id), project, key_id, cost.unwrap_or(0)),
        }
    }

    /// Charges `cost` for a request answered synchronously without a reservation (an
    /// embedding in a project without a balance): counted in the key's month.
    pub fn charge(&self, project: &str, key_id: &str, cost: u64) -> sled::Result<u64> {
        if self.shared {
            return Ok(cost);
        }
        self.charge_direct(None, project, key_id, cost)
    }

    /// A charge that closes no hold.
    fn charge_direct(
        &self,
        execution_id: Option<&str>,
        project: &str,
        key_id: &str,
        cost: u64,
    ) -> sled::Result<u64> {
        self.write_close(Closing {
            execution_id,
            project,
            key_id,
            in_ledger: self.is_limited(project),
            ledger_hold: 0,
            key_hold: 0,
            unreserve: 0,
            cost,
        })
    }

    /// Charges `cost` for a request answered synchronously (an embedding) against its
    /// unwritten reservation, which is given back in the same step.
    pub fn charge_reserved(&self, mut reservation: Reservation, cost: u64) -> sled::Result<u64> {
        reservation.written = true;
        self.write_close(Closing {
            execution_id: None,
            project: &reservation.project_id,
            key_id: &reservation.key_id,
            in_ledger: reservation.account.is_some(),
            ledger_hold: 0,
            key_hold: reservation.amount,
            unreserve: reservation.amount,
            cost,
        })
    }

    fn close(&self, execution_id: &str, hold: &HoldRecord, cost: Option<u64>) -> sled::Result<u64> {
        // Only a hold the ledger has is given back there: a project that got its balance
        // after this hold was placed never counted it.
        let charged = self.write_close(Closing {
            execution_id: Some(execution_id),
            project: &hold.project_id,
            key_id: &hold.key_id,
            in_ledger: hold.seq.is_some(),
            ledger_hold: hold.amount_micros,
            // Only a capped key counted the hold (see `reserve`).
            key_hold: if self.capped.contains_key(&hold.key_id) {
                hold.amount_micros
            } else {
                0
            },
            unreserve: 0,
            cost: cost.unwrap_or(0),
        })?;
        Ok(charged)
    }

    /// The ledger entry (when the project's ledger takes part) and the key's month for the
    /// end of a hold or a direct charge.
    fn write_close(&self, c: Closing<'_>) -> sled::Result<u64> {
        let mut charged = c.cost;
        if c.in_ledger {
            let account = self.account(c.project);
            let mut a = lock(&account);
            a.reserved = a.reserved.saturating_sub(c.unreserve);
            let held = a.held.saturating_sub(c.ledger_hold);
            // What the balance can pay once this hold is given back: the other holds stay.
            charged = c.cost.min(a.balance.saturating_sub(held + a.reserved));
            let (kind, amount) = if c.cost > 0 {
                (EntryKind::Settle, charged)
            } else {
                (EntryKind::Release, c.ledger_hold)
            };
            let mut entry = a.next(kind, amount, a.balance - charged, held);
            entry.execution_id = c.execution_id.map(String::from);
            entry.key_id = Some(c.key_id.to_string());
            if kind == EntryKind::Settle {
                entry.hold_micros = c.ledger_hold;
                entry.uncollected_micros = c.cost - charged;
            }
            if entry.uncollected_micros > 0 {
                tracing::warn!(execution_id = ?c.execution_id, project = %c.project, uncollected_micros = entry.uncollected_micros, "an answer cost more than the balance could pay");
            }
            if kind == EntryKind::Settle || c.ledger_hold > 0 {
                self.store.append_ledger(c.project, &entry)?;
                a.apply(&entry);
            }
        }
        // Only a key with a cap has a month to keep (and holds counted against it).
        let capped = self.capped.contains_key(c.key_id);
        if !capped && c.key_hold == 0 {
            return Ok(charged);
        }
        let month = month_of(now_ms());
        let key = self.key_month(c.key_id, month)?;
        let mut k = lock(&key);
        if k.month != month {
            k.month = month;
            k.spent = self.store.key_spend(c.key_id, month)?;
        }
        k.held = k.held.saturating_sub(c.key_hold);
        if charged > 0 && capped {
            k.spent += charged;
            self.store.put_key_spend(c.key_id, month, k.spent)?;
        }
        Ok(charged)
    }

    /// Adds `amount` to a project's balance (creating it: the project stops being
    /// unlimited). `None` when the sum would overflow.
    pub fn top_up(
        &self,
        project: &str,
        key_id: &str,
        amount: u64,
    ) -> Result<Option<Balance>, sled::Error> {
        let account = self.account(project);
        let mut a = lock(&account);
        let Some(balance) = a.balance.checked_add(amount) else {
            return Ok(None);
        };
        let mut entry = a.next(EntryKind::TopUp, amount, balance, a.held);
        entry.key_id = Some(key_id.to_string());
        self.store.append_ledger(project, &entry)?;
        a.apply(&entry);
        Ok(Some(Balance {
            balance_micros: a.balance,
            held_micros: a.held + a.reserved,
            available_micros: a.available(),
        }))
    }

    /// A key's spend this month and its open holds.
    pub fn key_usage(&self, key_id: &str) -> sled::Result<(u64, u64)> {
        let month = month_of(now_ms());
        let key = self.key_month(key_id, month)?;
        let k = lock(&key);
        if k.month != month {
            return Ok((self.store.key_spend(key_id, month)?, k.held));
        }
        Ok((k.spent, k.held))
    }

    /// What all projects hold for executions not yet ended, for metrics.
    pub fn held_micros(&self) -> u64 {
        self.accounts
            .iter()
            .map(|a| {
                let a = lock(a.value());
                a.held + a.reserved
            })
            .sum()
    }
}

/// What a finished execution's hold settles to: the cost of a `completed` one, nothing for
/// any other end.
pub fn settled_cost(record: &ExecutionRecord) -> Option<u64> {
    (record.status == Status::Completed).then(|| record.attempts_cost())
}

/// The end of a hold, or a charge without one.
struct Closing<'a> {
    execution_id: Option<&'a str>,
    project: &'a str,
    key_id: &'a str,
    /// Whether the project's ledger records it (the project has a balance).
    in_ledger: bool,
    /// What the ledger holds for it, and what the key's month does.
    ledger_hold: u64,
    key_hold: u64,
    /// A reservation never written, given back in the same step.
    unreserve: u64,
    /// What the answer cost (0: nothing to charge).
    cost: u64,
}

#[derive(Debug)]
pub enum ReserveError {
    Refused(Refusal),
    Store(sled::Error),
}

impl From<sled::Error> for ReserveError {
    fn from(e: sled::Error) -> Self {
        ReserveError::Store(e)
    }
}

/// Replays a project's ledger from its first entry: checks that seqs follow each other and
/// that every entry's balance and held amount are what the entries before it add up to.
/// Returns the final (balance, held).
pub fn audit(entries: &[LedgerEntry]) -> Result<(u64, u64), String> {
    let (mut balance, mut held) = (0u64, 0u64);
    for (i, e) in entries.iter().enumerate() {
        if e.seq != i as u64 + 1 {
            return Err(format!("entry {i} has seq {}", e.seq));
        }
        let fail = || format!("entry {} ({:?}) does not add up", e.seq, e.kind);
        match e.kind {
            EntryKind::TopUp => balance = balance.checked_add(e.amount_micros).ok_or_else(fail)?,
            EntryKind::Hold => held += e.amount_micros,
            EntryKind::Settle => {
                balance = balance.checked_sub(e.amount_micros).ok_or_else(fail)?;
                held = held.checked_sub(e.hold_micros).ok_or_else(fail)?;
            }
            EntryKind::Release => held = held.checked_sub(e.amount_micros).ok_or_else(fail)?,
        }
        if (balance, held) != (e.balance_micros, e.held_micros) || held > balance {
            return Err(fail());
        }
    }
    Ok((balance, held))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Attempt, AttemptOutcome};

    const WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);

    fn entries(store: &Store, project: &str) -> Vec<LedgerEntry> {
        store.ledger_page(project, None, 100_000).unwrap().0
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parallel_reservations_never_exceed_the_balance() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ledger = Arc::new(Ledger::open(store.clone(), WINDOW).unwrap());
        ledger.top_up("p", "admin", 50 * 10_000).unwrap();
        let threads: Vec<_> = (0..200)
            .map(|i| {
                let ledger = ledger.clone();
                std::thread::spawn(move || {
                    let mut r = match ledger.reserve("p", "k", None, 10_000) {
                        Ok(Some(r)) => r,
                        Ok(None) => panic!("a limited project reserves"),
                        Err(_) => return false,
                    };
                    ledger.hold(&mut r, &format!("exec_{i}")).unwrap();
                    true
                })
            })
            .collect();
        let accepted = threads
            .into_iter()
            .map(|t| t.join().unwrap())
            .filter(|&ok| ok)
            .count();
        assert_eq!(accepted, 50);
        let b = ledger.balance("p").unwrap();
        assert_eq!(
            (b.balance_micros, b.held_micros, b.available_micros),
            (500_000, 500_000, 0)
        );
        assert_eq!(audit(&entries(&store, "p")), Ok((500_000, 500_000)));
    }

    #[tokio::test]
    async fn settle_charges_the_cost_release_gives_the_hold_back_and_nothing_goes_negative() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ledger = Ledger::open(store.clone(), WINDOW).unwrap();
        ledger.set_capped("k", true);
        ledger.top_up("p", "admin", 100_000).unwrap();
        for id in ["a", "b", "c"] {
            let mut r = ledger.reserve("p", "k", None, 30_000).unwrap().unwrap();
            ledger.hold(&mut r, id).unwrap();
        }
        // Dropped unwritten: given back.
        drop(ledger.reserve("p", "k", None, 10_000).unwrap());
        assert_eq!(ledger.balance("p").unwrap().available_micros, 10_000);
        assert_eq!(ledger.settle("a", "p", "k", Some(12_345)).unwrap(), 12_345);
        assert_eq!(ledger.settle("b", "p", "k", None).unwrap(), 0);
        // Costs more than everything left: charged what the balance can pay.
        assert_eq!(
            ledger.settle("c", "p", "k", Some(1_000_000)).unwrap(),
            87_655
        );
        let b = ledger.balance("p").unwrap();
        assert_eq!((b.balance_micros, b.held_micros), (0, 0));
        let all = entries(&store, "p");
        assert_eq!(audit(&all), Ok((0, 0)));
        let last = all.last().unwrap();
        assert_eq!(
            (last.kind, last.uncollected_micros),
            (EntryKind::Settle, 912_345)
        );
        assert!(ledger.holds.is_empty());
        assert_eq!(store.key_spend("k", month_of(now_ms())).unwrap(), 100_000);
    }

    #[tokio::test]
    async fn a_monthly_cap_counts_spend_and_open_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ledger = Ledger::open(store.clone(), WINDOW).unwrap();
        ledger.set_capped("k", true);
        let mut r = ledger
            .reserve("p", "k", Some(25_000), 10_000)
            .unwrap()
            .unwrap();
        ledger.hold(&mut r, "a").unwrap();
        let mut r = ledger
            .reserve("p", "k", Some(25_000), 10_000)
            .unwrap()
            .unwrap();
        ledger.hold(&mut r, "b").unwrap();
        assert!(matches!(
            ledger.reserve("p", "k", Some(25_000), 10_000),
            Err(ReserveError::Refused(Refusal::KeyCap { used: 20_000, .. }))
        ));
        assert!(ledger
            .reserve("p", "other", Some(25_000), 10_000)
            .unwrap()
            .is_some());
        ledger.settle("a", "p", "k", Some(1_000)).unwrap();
        ledger.settle("b", "p", "k", None).unwrap();
        assert_eq!(ledger.key_usage("k").unwrap(), (1_000, 0));
        // The project has no balance: its ledger stays empty.
        assert!(entries(&store, "p").is_empty());
        assert!(!ledger.is_limited("p"));
    }

    fn record(id: &str, status: Status, cost: Option<u64>) -> ExecutionRecord {
        let mut r = crate::store::tests_support::record(id, id, "f");
        r.project_id = "p".into();
        r.status = status;
        r.attempts = vec![Attempt {
            provider: "x".into(),
            model: "m".into(),
            strategy: "initial".into(),
            outcome: AttemptOutcome::Succeeded,
            chunks_delivered: 1,
            error_code: None,
            error_message: None,
            usage: None,
            started_at_ms: 1,
            first_chunk_ms: None,
            ended_at_ms: None,
            cost_micros: cost,
        }];
        r
    }

    #[tokio::test]
    async fn opening_finishes_what_a_crash_interrupted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ledger = Ledger::open(store.clone(), WINDOW).unwrap();
        ledger.top_up("p", "admin", 100_000).unwrap();
        for id in ["running", "done", "failed", "vanished", "closed"] {
            let mut r = ledger.reserve("p", "k", None, 20_000).unwrap().unwrap();
            ledger.hold(&mut r, id).unwrap();
        }
        // Settled before the crash: nothing more to do for it.
        ledger.settle("closed", "p", "k", Some(1_000)).unwrap();
        let req = crate::store::tests_support::request();
        for (id, status, cost) in [
            ("running", Status::Processing, None),
            ("done", Status::Completed, Some(7_000)),
            ("failed", Status::Failed, Some(3_000)),
            ("closed", Status::Completed, Some(1_000)),
            // Written, but its hold entry never was (a crash between the two).
            ("cut", Status::Processing, None),
        ] {
            let r = record(id, status, cost);
            store
                .create_execution(&r, &req, &crate::domain::Event::status(1, status))
                .unwrap();
            if !status.is_terminal() {
                continue;
            }
            store.put_execution(&r).unwrap();
        }
        // The process dies: what it kept in memory is gone.
        drop(ledger);
        let ledger = Ledger::open(store.clone(), WINDOW).unwrap();
        let b = ledger.balance("p").unwrap();
        assert_eq!((b.balance_micros, b.held_micros), (92_000, 20_000));
        assert_eq!(audit(&entries(&store, "p")), Ok((92_000, 20_000)));
        let mut open: Vec<String> = ledger.holds.iter().map(|h| h.key().clone()).collect();
        open.sort();
        assert_eq!(open, ["running"]);
        // The resumed execution keeps its hold; the one without a hold is charged directly.
        assert_eq!(
            ledger.settle("running", "p", "k", Some(2_000)).unwrap(),
            2_000
        );
        assert_eq!(ledger.settle("cut", "p", "k", Some(500)).unwrap(), 500);
        assert_eq!(audit(&entries(&store, "p")), Ok((89_500, 0)));
        // Opening again finds nothing left to do.
        drop(ledger);
        let ledger = Ledger::open(store.clone(), WINDOW).unwrap();
        assert!(ledger.holds.is_empty());
        assert_eq!(audit(&entries(&store, "p")), Ok((89_500, 0)));
    }

    #[tokio::test]
    async fn a_key_cap_hold_of_a_project_without_balance_comes_back_from_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (key, _) = store
            .create_key("q", crate::store::KeyRole::Member, None, Default::default())
            .unwrap();
        let limits = crate::store::KeyLimits {
            monthly_spend_cap_micros: Some(50_000),
            ..Default::default()
        };
        let key = store.set_key_limits(key, limits).unwrap();
        let k = key.id.as_str();
        let ledger = Ledger::open(store.clone(), WINDOW).unwrap();
        let mut r = ledger
            .reserve("q", k, Some(50_000), 30_000)
            .unwrap()
            .unwrap();
        ledger.hold(&mut r, "capped").unwrap();
        let mut rec = record("capped", Status::Processing, None);
        rec.project_id = "q".into();
        rec.key_id = Some(k.to_string());
        rec.cost = Some(crate::domain::Cost {
            held_micros: 30_000,
            settled_micros: None,
        });
        let req = crate::store::tests_support::request();
        store
            .create_execution(
                &rec,
                &req,
                &crate::domain::Event::status(1, Status::Processing),
            )
            .unwrap();
        drop(ledger);
        let ledger = Ledger::open(store.clone(), WINDOW).unwrap();
        assert_eq!(ledger.key_usage(k).unwrap(), (0, 30_000));
        assert!(matches!(
            ledger.reserve("q", k, Some(50_000), 30_000),
            Err(ReserveError::Refused(Refusal::KeyCap { .. }))
        ));
        ledger.settle("capped", "q", k, Some(4_000)).unwrap();
        assert_eq!(ledger.key_usage(k).unwrap(), (4_000, 0));
    }

    #[test]
    fn months_are_utc_calendar_months() {
        assert_eq!(month_of(0), 197001);
        // 2026-12-31T23:59:59Z and one second later.
        assert_eq!(month_of(1_798_761_599_000), 202612);
        assert_eq!(month_of(1_798_761_600_000), 202701);
    }
}
