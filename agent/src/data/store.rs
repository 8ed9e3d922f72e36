//! Durable history in an embedded redb database: 1-minute chain aggregates,
//! lifetime totals and the sequence numbers already counted, written
//! together in one transaction per persistence interval.

use crate::data::aggregate::ChainAgg;
use crate::data::state::{Dirty, SeqWindow};
use redb::{Database, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};

const MINUTES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("minutes");
const LIFETIME: TableDefinition<&str, &[u8]> = TableDefinition::new("lifetime");
const VMS: TableDefinition<&str, &[u8]> = TableDefinition::new("vms");
/// The configuration model's own rows (what was observed, the knobs in
/// force, what followed), keyed by a growing sequence number.
const MODEL_ROWS: TableDefinition<u64, &[u8]> = TableDefinition::new("model_rows");
/// The decision log, keyed by decision id.
const DECISIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("decisions");

pub const STORE_FILE: &str = "meshtune.redb";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("store {path}: {message}")]
    Db { path: PathBuf, message: String },
    #[error("cannot move the unreadable store {path} aside: {source}")]
    MoveAside {
        path: PathBuf,
        source: std::io::Error,
    },
}

pub struct Store {
    db: Database,
    path: PathBuf,
}

/// What [`Store::open`] found.
#[derive(Debug, Default)]
pub struct Opened {
    /// Where an unreadable store was moved, if one was.
    pub moved_aside: Option<(PathBuf, String)>,
}

/// Everything restored at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    pub minutes: Vec<((String, u64), ChainAgg)>,
    pub lifetime: Vec<(String, ChainAgg)>,
    pub vms: Vec<(String, SeqWindow)>,
    /// Entries that could not be decoded and were skipped.
    pub skipped: usize,
}

impl Store {
    fn db_err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Opens (or creates) the store in `dir`. A file that is not a readable
    /// store is renamed to `meshtune.redb.corrupt-<unix seconds>` and a new
    /// one is started; the caller reports it.
    pub fn open(dir: &Path, now_secs: u64) -> Result<(Store, Opened), StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(STORE_FILE);
        let mut opened = Opened::default();
        let db = match Database::create(&path)
            .map_err(|e| e.to_string())
            .and_then(check_tables)
        {
            Ok(db) => db,
            Err(e) => {
                let aside = dir.join(format!("{STORE_FILE}.corrupt-{now_secs}"));
                std::fs::rename(&path, &aside).map_err(|source| StoreError::MoveAside {
                    path: path.clone(),
                    source,
                })?;
                opened.moved_aside = Some((aside, e));
                Database::create(&path)
                    .map_err(|e| e.to_string())
                    .and_then(check_tables)
                    .map_err(|e| StoreError::Db {
                        path: path.clone(),
                        message: e,
                    })?
            }
        };
        Ok((Store { db, path }, opened))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads lifetime totals, VM sequence windows and the minutes since `from_minute`.
    pub fn load(&self, from_minute: u64) -> Result<Loaded, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let mut out = Loaded::default();
        let minutes = tx.open_table(MINUTES).map_err(|e| self.db_err(e))?;
        for item in minutes.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            let (chain, minute) = k.value();
            if minute < from_minute {
                continue;
            }
            match serde_json::from_slice(v.value()) {
                Ok(agg) => out.minutes.push(((chain.to_owned(), minute), agg)),
                Err(_) => out.skipped += 1,
            }
        }
        let lifetime = tx.open_table(LIFETIME).map_err(|e| self.db_err(e))?;
        for item in lifetime.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            match serde_json::from_slice(v.value()) {
                Ok(agg) => out.lifetime.push((k.value().to_owned(), agg)),
                Err(_) => out.skipped += 1,
            }
        }
        let vms = tx.open_table(VMS).map_err(|e| self.db_err(e))?;
        for item in vms.iter().map_err(|e| self.db_err(e))? {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            match serde_json::from_slice(v.value()) {
                Ok(w) => out.vms.push((k.value().to_owned(), w)),
                Err(_) => out.skipped += 1,
            }
        }
        Ok(out)
    }

    /// Writes one batch of changes atomically and drops minutes older than
    /// `retain_from_minute`.
    pub fn persist(&self, d: &Dirty, retain_from_minute: Option<u64>) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut minutes = tx.open_table(MINUTES).map_err(|e| self.db_err(e))?;
            for ((chain, minute), agg) in &d.minutes {
                let bytes = serde_json::to_vec(agg).map_err(|e| self.db_err(e))?;
                minutes
                    .insert((chain.as_str(), *minute), bytes.as_slice())
                    .map_err(|e| self.db_err(e))?;
            }
            if let Some(from) = retain_from_minute {
                minutes
                    .retain(|(_, m), _| m >= from)
                    .map_err(|e| self.db_err(e))?;
            }
            let mut lifetime = tx.open_table(LIFETIME).map_err(|e| self.db_err(e))?;
            for (chain, agg) in &d.lifetime {
                let bytes = serde_json::to_vec(agg).map_err(|e| self.db_err(e))?;
                lifetime
                    .insert(chain.as_str(), bytes.as_slice())
                    .map_err(|e| self.db_err(e))?;
            }
            let mut vms = tx.open_table(VMS).map_err(|e| self.db_err(e))?;
            for (vm, w) in &d.vms {
                let bytes = serde_json::to_vec(w).map_err(|e| self.db_err(e))?;
                vms.insert(vm.as_str(), bytes.as_slice())
                    .map_err(|e| self.db_err(e))?;
            }
            for vm in &d.forgotten_vms {
                vms.remove(vm.as_str()).map_err(|e| self.db_err(e))?;
            }
        }
        tx.commit().map_err(|e| self.db_err(e))
    }

    /// Minutes of `chain` in `[from, to)` from disk.
    pub fn minutes(
        &self,
        chain: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, ChainAgg)>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = tx.open_table(MINUTES).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for item in table
            .range((chain, from)..(chain, to))
            .map_err(|e| self.db_err(e))?
        {
            let (k, v) = item.map_err(|e| self.db_err(e))?;
            if let Ok(agg) = serde_json::from_slice(v.value()) {
                out.push((k.value().1, agg));
            }
        }
        Ok(out)
    }
}

impl Store {
    /// Appends the model's rows (each serialised by the caller) after the
    /// highest key held, keeping only the newest `keep`.
    pub fn append_model_rows(&self, rows: &[Vec<u8>], keep: usize) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut table = tx.open_table(MODEL_ROWS).map_err(|e| self.db_err(e))?;
            let mut next = table
                .last()
                .map_err(|e| self.db_err(e))?
                .map_or(0, |(k, _)| k.value() + 1);
            for r in rows {
                table
                    .insert(next, r.as_slice())
                    .map_err(|e| self.db_err(e))?;
                next += 1;
            }
            let from = next.saturating_sub(keep as u64);
            table.retain(|k, _| k >= from).map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))
    }

    /// Writes decisions (new or updated, by id), keeping ids above
    /// `keep_from`.
    pub fn put_decisions(
        &self,
        items: &[(u64, Vec<u8>)],
        keep_from: u64,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut table = tx.open_table(DECISIONS).map_err(|e| self.db_err(e))?;
            for (id, b) in items {
                table
                    .insert(*id, b.as_slice())
                    .map_err(|e| self.db_err(e))?;
            }
            table
                .retain(|k, _| k >= keep_from)
                .map_err(|e| self.db_err(e))?;
        }
        tx.commit().map_err(|e| self.db_err(e))
    }

    /// The decision log, oldest first.
    pub fn decisions(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = tx.open_table(DECISIONS).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| self.db_err(e))? {
            let (_, v) = item.map_err(|e| self.db_err(e))?;
            out.push(v.value().to_vec());
        }
        Ok(out)
    }

    /// The model's rows, oldest first.
    pub fn model_rows(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = tx.open_table(MODEL_ROWS).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| self.db_err(e))? {
            let (_, v) = item.map_err(|e| self.db_err(e))?;
            out.push(v.value().to_vec());
        }
        Ok(out)
    }
}

/// Creates the tables when missing, so a store that opens is a store that reads.
fn check_tables(db: Database) -> Result<Database, String> {
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    tx.open_table(MINUTES).map_err(|e| e.to_string())?;
    tx.open_table(LIFETIME).map_err(|e| e.to_string())?;
    tx.open_table(VMS).map_err(|e| e.to_string())?;
    tx.open_table(MODEL_ROWS).map_err(|e| e.to_string())?;
    tx.open_table(DECISIONS).map_err(|e| e.to_string())?;
    tx.commit().map_err(|e| e.to_string())?;
    Ok(db)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persists_and_loads_and_moves_corrupt_files_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (store, opened) = Store::open(dir.path(), 1).unwrap();
        assert!(opened.moved_aside.is_none());
        let mut agg = ChainAgg::default();
        agg.end_to_end.requests = 7;
        let dirty = Dirty {
            minutes: vec![
                (("c".into(), 10), agg.clone()),
                (("c".into(), 2), agg.clone()),
            ],
            lifetime: vec![("c".into(), agg.clone())],
            vms: vec![(
                "vm".into(),
                SeqWindow {
                    max: 3,
                    mask: 1,
                    last_minute: 10,
                },
            )],
            forgotten_vms: vec![],
        };
        store.persist(&dirty, Some(5)).unwrap();
        let loaded = store.load(0).unwrap();
        assert_eq!(loaded.minutes.len(), 1, "minute 2 is past retention");
        assert_eq!(loaded.lifetime[0].1.end_to_end.requests, 7);
        assert_eq!(loaded.vms[0].1.max, 3);
        drop(store);

        std::fs::write(
            dir.path().join(STORE_FILE),
            b"this is not a redb file at all, not even close",
        )
        .unwrap();
        let (store, opened) = Store::open(dir.path(), 99).unwrap();
        let Some((aside, why)) = opened.moved_aside else {
            unreachable!("expected the file to be moved aside")
        };
        assert!(aside.ends_with("meshtune.redb.corrupt-99"), "{aside:?}");
        assert!(!why.is_empty());
        assert!(aside.exists());
        assert!(store.load(0).unwrap().lifetime.is_empty());
    }
}
