//! A store tree: a sled tree whose every write is also appended to the commit log (`wal.rs`),
//! under its key's stripe so sled and the log see writes to one key in the same order. It has
//! no `Deref` to `sled::Tree` on purpose: a write that bypassed the log would be lost in a
//! crash once acknowledged, so only the operations below exist.

use std::ops::RangeBounds;
use std::sync::Arc;

use sled::{CompareAndSwapError, IVec};

use super::wal::CommitLog;

#[derive(Clone)]
pub struct Tree {
    tree: sled::Tree,
    /// The tree's name as the log records it.
    name: IVec,
    log: Arc<CommitLog>,
}

/// Writes applied to one tree at once (sled's `apply_batch`), logged together.
#[derive(Default)]
pub struct Batch {
    writes: Vec<(IVec, Option<IVec>)>,
}

impl Batch {
    pub fn insert(&mut self, key: impl Into<IVec>, value: impl Into<IVec>) {
        self.writes.push((key.into(), Some(value.into())));
    }

    pub fn remove(&mut self, key: impl Into<IVec>) {
        self.writes.push((key.into(), None));
    }
}

impl Tree {
    pub fn open(db: &sled::Db, log: &Arc<CommitLog>, name: &str) -> sled::Result<Tree> {
        let tree = db.open_tree(name)?;
        Ok(Tree {
            name: tree.name(),
            tree,
            log: log.clone(),
        })
    }

    pub fn insert<K: AsRef<[u8]>, V: Into<IVec>>(
        &self,
        key: K,
        value: V,
    ) -> sled::Result<Option<IVec>> {
        let (key, value) = (key.as_ref(), value.into());
        let _stripe = self.log.stripe(&self.name, key);
        let previous = self.tree.insert(key, value.clone())?;
        self.log.put(&self.name, key, Some(&value));
        Ok(previous)
    }

    pub fn remove<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<Option<IVec>> {
        let key = key.as_ref();
        let _stripe = self.log.stripe(&self.name, key);
        let previous = self.tree.remove(key)?;
        // Removing nothing changed nothing: no frame.
        if previous.is_some() {
            self.log.put(&self.name, key, None);
        }
        Ok(previous)
    }

    pub fn compare_and_swap<K, OV, NV>(
        &self,
        key: K,
        old: Option<OV>,
        new: Option<NV>,
    ) -> sled::Result<Result<(), CompareAndSwapError>>
    where
        K: AsRef<[u8]>,
        OV: AsRef<[u8]>,
        NV: Into<IVec>,
    {
        let key = key.as_ref();
        let new: Option<IVec> = new.map(Into::into);
        let _stripe = self.log.stripe(&self.name, key);
        let result = self.tree.compare_and_swap(key, old, new.clone())?;
        if result.is_ok() {
            self.log.put(&self.name, key, new.as_deref());
        }
        Ok(result)
    }

    pub fn update_and_fetch<K, V, F>(&self, key: K, mut f: F) -> sled::Result<Option<IVec>>
    where
        K: AsRef<[u8]>,
        F: FnMut(Option<&[u8]>) -> Option<V>,
        IVec: From<V>,
    {
        let key = key.as_ref();
        let _stripe = self.log.stripe(&self.name, key);
        let new = self.tree.update_and_fetch(key, &mut f)?;
        self.log.put(&self.name, key, new.as_deref());
        Ok(new)
    }

    pub fn apply_batch(&self, batch: Batch) -> sled::Result<()> {
        let keys = batch.writes.iter().map(|(k, _)| k.as_ref());
        let _stripes = self.log.stripes_of(&self.name, keys);
        let mut sled_batch = sled::Batch::default();
        for (key, value) in &batch.writes {
            match value {
                Some(value) => sled_batch.insert(key.clone(), value.clone()),
                None => sled_batch.remove(key.clone()),
            }
        }
        self.tree.apply_batch(sled_batch)?;
        for (key, value) in &batch.writes {
            self.log.put(&self.name, key, value.as_deref());
        }
        Ok(())
    }

    pub fn clear(&self) -> sled::Result<()> {
        let _all = self.log.all_stripes();
        self.tree.clear()?;
        self.log.clear(&self.name);
        Ok(())
    }

    // Reads go straight to sled.

    pub fn get<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<Option<IVec>> {
        self.tree.get(key)
    }

    pub fn contains_key<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<bool> {
        self.tree.contains_key(key)
    }

    pub fn iter(&self) -> sled::Iter {
        self.tree.iter()
    }

    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> sled::Iter {
        self.tree.range(range)
    }

    pub fn scan_prefix<P: AsRef<[u8]>>(&self, prefix: P) -> sled::Iter {
        self.tree.scan_prefix(prefix)
    }

    pub fn first(&self) -> sled::Result<Option<(IVec, IVec)>> {
        self.tree.first()
    }

    pub fn last(&self) -> sled::Result<Option<(IVec, IVec)>> {
        self.tree.last()
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    pub fn name(&self) -> IVec {
        self.name.clone()
    }

    pub fn watch_prefix<P: AsRef<[u8]>>(&self, prefix: P) -> sled::Subscriber {
        self.tree.watch_prefix(prefix)
    }
}

/// Opens store trees of one sled db, logging to one commit log.
pub struct Opener<'a> {
    pub db: &'a sled::Db,
    pub log: &'a Arc<CommitLog>,
}

impl Opener<'_> {
    pub fn tree(&self, name: &str) -> sled::Result<Tree> {
        Tree::open(self.db, self.log, name)
    }
}
