//! The durable exchange store: one SQLite file in WAL mode.
//!
//! Every exchange is one row written in its own transaction; [`Memory::store`] returns only
//! after the commit, and with `synchronous=FULL` (the default) the commit is on disk, so an
//! exchange reported stored survives the process being killed at any moment (and a power
//! cut). `synchronous=NORMAL` still survives a killed process, not a power cut.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};
use serde::Serialize;

use crate::refine::RefineInfo;
use crate::snarc::{
    lexical_surprise, score, score_with_surprise, Exchange, IndexEntry, MemoryIndex, Score, Scored,
    SnarcConfig, SnarcScores,
};
use crate::text::Embedding;

/// Schema version in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

/// What went wrong with the memory file; every variant names it.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Another process holds the file's write lock longer than the busy timeout.
    #[error("the memory file {path} is locked by another process (waited {waited_ms} ms); close the other kiln or pass --memory OTHER.db")]
    Locked {
        /// The file.
        path: PathBuf,
        /// How long kiln waited.
        waited_ms: u64,
    },
    /// Not an SQLite database, or a damaged one.
    #[error("the memory file {path} is corrupt or not a kiln memory database ({detail}); move it aside or pass --memory OTHER.db")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// SQLite's words.
        detail: String,
    },
    /// Written by a newer kiln.
    #[error("the memory file {path} has schema version {found}; this kiln reads version {SCHEMA_VERSION}")]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: i64,
    },
    /// The folder could not be created.
    #[error("cannot create the folder of the memory file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Any other SQLite failure.
    #[error("the memory file {path}: {source}")]
    Sql {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        source: rusqlite::Error,
    },
}

/// How to open the store.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    /// How long to wait for another writer before reporting the file as locked.
    pub busy_timeout: Duration,
    /// `synchronous=FULL` (true: durable across power loss) or `NORMAL` (durable across a
    /// killed process only; faster commits).
    pub full_sync: bool,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            busy_timeout: Duration::from_secs(2),
            full_sync: true,
        }
    }
}

/// A new exchange to store.
#[derive(Debug, Clone, Copy)]
pub struct NewExchange<'a> {
    /// Where it came from (`irp`, `chat`, `server`, ...).
    pub source: &'a str,
    /// A conversation id, if any.
    pub session: Option<&'a str>,
    /// The question.
    pub question: &'a str,
    /// The answer.
    pub answer: &'a str,
    /// The refinement info, if the answer was refined.
    pub irp: Option<&'a RefineInfo>,
}

/// A stored exchange.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredExchange {
    /// Row id.
    pub id: i64,
    /// Unix time of storing, in seconds.
    pub created_at: f64,
    /// Where it came from.
    pub source: String,
    /// Conversation id.
    pub session: Option<String>,
    /// The question.
    pub question: String,
    /// The answer.
    pub answer: String,
    /// SNARC scores.
    pub snarc: SnarcScores,
    /// Whether salient.
    pub salient: bool,
    /// Refinement info as JSON, if any.
    pub irp: Option<serde_json::Value>,
}

/// Counts and means over the store.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    /// The file.
    pub path: String,
    /// Bytes of the database file and its WAL.
    pub bytes: u64,
    /// Exchanges stored.
    pub exchanges: i64,
    /// Salient ones.
    pub salient: i64,
    /// Mean SNARC total.
    pub mean_salience: Option<f64>,
    /// Mean of each dimension: surprise, novelty, arousal, reward, conflict.
    pub mean_scores: Option<[f64; 5]>,
    /// Unix times of the first and last exchange.
    pub first_last: Option<[f64; 2]>,
}

/// The store, with the embeddings of every stored exchange kept in memory for scoring.
pub struct Memory {
    conn: Connection,
    path: PathBuf,
    opts: OpenOptions,
    index: MemoryIndex,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Memory({})", self.path.display())
    }
}

/// `$KILN_MEMORY`, else `kiln/memory.db` in the user's data folder (`$XDG_DATA_HOME` or
/// `~/.local/share` on Linux).
pub fn default_path() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_MEMORY").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    dirs::data_dir()
        .unwrap_or_else(|| PathBuf::from("."))
        .join("kiln")
        .join("memory.db")
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Memory {
    /// Opens (creating if needed) the store at `path` with default options.
    pub fn open(path: &Path) -> Result<Memory, MemoryError> {
        Self::open_with(path, OpenOptions::default())
    }

    /// Opens (creating if needed) the store at `path`.
    pub fn open_with(path: &Path, opts: OpenOptions) -> Result<Memory, MemoryError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| MemoryError::Io {
                path: path.to_owned(),
                source,
            })?;
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| classify(path, &opts, e))?;
        let mut m = Memory {
            conn,
            path: path.to_owned(),
            opts,
            index: MemoryIndex::default(),
        };
        m.setup().map_err(|e| classify(path, &opts, e))?;
        let v: i64 = m
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| m.err(e))?;
        if v > SCHEMA_VERSION {
            return Err(MemoryError::Version {
                path: path.to_owned(),
                found: v,
            });
        }
        m.load_index()?;
        Ok(m)
    }

    fn setup(&mut self) -> rusqlite::Result<()> {
        self.conn.busy_timeout(self.opts.busy_timeout)?;
        // Reading the mode back fails early and clearly on a file that is not a database.
        let _mode: String = self
            .conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        self.conn.execute_batch(if self.opts.full_sync {
            "PRAGMA synchronous=FULL;"
        } else {
            "PRAGMA synchronous=NORMAL;"
        })?;
        self.conn.execute_batch(
            "BEGIN;
             CREATE TABLE IF NOT EXISTS exchanges (
                 id INTEGER PRIMARY KEY AUTOINCREMENT,
                 created_at REAL NOT NULL,
                 source TEXT NOT NULL,
                 session TEXT,
                 question TEXT NOT NULL,
                 answer TEXT NOT NULL,
                 salience REAL NOT NULL,
                 salient INTEGER NOT NULL,
                 snarc TEXT NOT NULL,
                 irp TEXT,
                 embedding BLOB NOT NULL,
                 q_embedding BLOB NOT NULL,
                 negated INTEGER NOT NULL
             );
             CREATE INDEX IF NOT EXISTS exchanges_salient ON exchanges(salient);
             COMMIT;",
        )?;
        let v: i64 = self
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if v == 0 {
            self.conn
                .execute_batch(&format!("PRAGMA user_version={SCHEMA_VERSION};"))?;
        }
        Ok(())
    }

    fn err(&self, e: rusqlite::Error) -> MemoryError {
        classify(&self.path, &self.opts, e)
    }

    fn load_index(&mut self) -> Result<(), MemoryError> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, embedding, q_embedding, negated FROM exchanges ORDER BY id")
            .map_err(|e| classify(&self.path, &self.opts, e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, bool>(3)?,
                ))
            })
            .map_err(|e| classify(&self.path, &self.opts, e))?;
        let mut entries = Vec::new();
        for row in rows {
            let (id, e, q, negated) = row.map_err(|e| classify(&self.path, &self.opts, e))?;
            let (Some(exchange), Some(question)) =
                (Embedding::from_bytes(&e), Embedding::from_bytes(&q))
            else {
                return Err(MemoryError::Corrupt {
                    path: self.path.clone(),
                    detail: format!("exchange #{id} has an embedding of the wrong size"),
                });
            };
            entries.push(IndexEntry {
                id,
                exchange,
                question,
                negated,
            });
        }
        drop(stmt);
        self.index = MemoryIndex { entries };
        Ok(())
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The embeddings of every stored exchange.
    pub fn index(&self) -> &MemoryIndex {
        &self.index
    }

    /// Scores an exchange against what the store holds, without storing it.
    pub fn score(&self, cfg: &SnarcConfig, ex: &Exchange<'_>) -> Scored {
        score(cfg, ex, &self.index)
    }

    /// Stores a scored exchange; returns its id once the commit is durable.
    pub fn store(&mut self, ex: &NewExchange<'_>, scored: &Scored) -> Result<i64, MemoryError> {
        let snarc = serde_json::to_string(&scored.scores).unwrap_or_default();
        let irp = ex.irp.map(|i| serde_json::to_string(i).unwrap_or_default());
        self.conn
            .execute(
                "INSERT INTO exchanges (created_at, source, session, question, answer, salience,
                     salient, snarc, irp, embedding, q_embedding, negated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    now_s(),
                    ex.source,
                    ex.session,
                    ex.question,
                    ex.answer,
                    scored.scores.total,
                    scored.scores.salient,
                    snarc,
                    irp,
                    scored.exchange.to_bytes(),
                    scored.question.to_bytes(),
                    scored.negated,
                ],
            )
            .map_err(|e| self.err(e))?;
        let id = self.conn.last_insert_rowid();
        self.index.entries.push(IndexEntry {
            id,
            exchange: scored.exchange.clone(),
            question: scored.question.clone(),
            negated: scored.negated,
        });
        Ok(id)
    }

    /// Scores `ex` (with the last three stored questions as the recent ones when
    /// `recent_questions` is `None`) and stores it; returns the id and the scores.
    pub fn record(
        &mut self,
        cfg: &SnarcConfig,
        ex: &NewExchange<'_>,
        recent_questions: Option<&[String]>,
    ) -> Result<(i64, SnarcScores), MemoryError> {
        let stored;
        let recent = match recent_questions {
            Some(r) => r,
            None => {
                stored = self.recent_questions(3)?;
                &stored
            }
        };
        self.record_with_surprise(cfg, ex, lexical_surprise(ex.question, recent))
    }

    /// Scores `ex` with a Surprise measured elsewhere (by the model: see
    /// [`crate::snarc::model_surprise`]) and stores it; returns the id and the scores.
    pub fn record_with_surprise(
        &mut self,
        cfg: &SnarcConfig,
        ex: &NewExchange<'_>,
        surprise: Score,
    ) -> Result<(i64, SnarcScores), MemoryError> {
        let scored = score_with_surprise(
            cfg,
            &Exchange {
                question: ex.question,
                answer: ex.answer,
                final_energy: ex.irp.map(|i| i.best_energy),
                recent_questions: &[],
            },
            &self.index,
            surprise,
        );
        let id = self.store(ex, &scored)?;
        Ok((id, scored.scores))
    }

    /// The last `n` stored exchanges as (question, answer), oldest first: the history a
    /// one-off question is measured against when it has no conversation of its own.
    pub fn recent_exchanges(&self, n: usize) -> Result<Vec<(String, String)>, MemoryError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT question, answer FROM exchanges ORDER BY id DESC LIMIT ?1")
            .map_err(|e| self.err(e))?;
        let mut out: Vec<(String, String)> = stmt
            .query_map([n as i64], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.err(e))?;
        out.reverse();
        Ok(out)
    }

    /// The last `n` stored questions, oldest first.
    pub fn recent_questions(&self, n: usize) -> Result<Vec<String>, MemoryError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT question FROM exchanges ORDER BY id DESC LIMIT ?1")
            .map_err(|e| self.err(e))?;
        let mut out: Vec<String> = stmt
            .query_map([n as i64], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.err(e))?;
        out.reverse();
        Ok(out)
    }

    fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredExchange> {
        let snarc: String = r.get(7)?;
        let irp: Option<String> = r.get(8)?;
        Ok(StoredExchange {
            id: r.get(0)?,
            created_at: r.get(1)?,
            source: r.get(2)?,
            session: r.get(3)?,
            question: r.get(4)?,
            answer: r.get(5)?,
            salient: r.get(6)?,
            snarc: serde_json::from_str(&snarc).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    7,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })?,
            irp: irp.and_then(|s| serde_json::from_str(&s).ok()),
        })
    }

    const COLUMNS: &'static str =
        "id, created_at, source, session, question, answer, salient, snarc, irp";

    /// One exchange by id.
    pub fn get(&self, id: i64) -> Result<Option<StoredExchange>, MemoryError> {
        self.conn
            .query_row(
                &format!("SELECT {} FROM exchanges WHERE id = ?1", Self::COLUMNS),
                [id],
                Self::row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The newest `limit` exchanges (only salient ones if asked), newest first.
    pub fn list(
        &self,
        limit: usize,
        salient_only: bool,
    ) -> Result<Vec<StoredExchange>, MemoryError> {
        let sql = format!(
            "SELECT {} FROM exchanges {} ORDER BY id DESC LIMIT ?1",
            Self::COLUMNS,
            if salient_only {
                "WHERE salient = 1"
            } else {
                ""
            }
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([limit.min(i64::MAX as usize) as i64], Self::row)
            .and_then(|rows| rows.collect());
        rows.map_err(|e| self.err(e))
    }

    /// Exchanges most similar to `query` (hashed bag-of-words cosine), best first, with their
    /// similarity; exchanges that contain the query text verbatim rank first.
    pub fn search(
        &self,
        query: &str,
        limit: usize,
    ) -> Result<Vec<(StoredExchange, f32)>, MemoryError> {
        let q = Embedding::of(query);
        let needle = query.to_lowercase();
        let mut scored: Vec<(i64, f32)> = self
            .index
            .entries
            .iter()
            .map(|e| (e.id, e.exchange.cosine(&q)))
            .collect();
        // Verbatim matches from SQL, so that a search for a stopword-only phrase still works.
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id FROM exchanges WHERE instr(lower(question || ' ' || answer), ?1) > 0",
            )
            .map_err(|e| self.err(e))?;
        let verbatim: std::collections::HashSet<i64> = stmt
            .query_map([&needle], |r| r.get(0))
            .and_then(|rows| rows.collect())
            .map_err(|e| self.err(e))?;
        for s in &mut scored {
            if verbatim.contains(&s.0) {
                s.1 += 1.0;
            }
        }
        scored.retain(|s| s.1 > 0.05);
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
        scored.truncate(limit);
        let mut out = Vec::with_capacity(scored.len());
        for (id, s) in scored {
            if let Some(x) = self.get(id)? {
                out.push((x, s.min(1.0)));
            }
        }
        Ok(out)
    }

    /// Writes every exchange (or the salient ones) as chat-format JSONL, one
    /// `{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}` per line, oldest
    /// first; returns how many were written.
    pub fn export_jsonl(
        &self,
        out: &mut dyn Write,
        salient_only: bool,
    ) -> Result<usize, MemoryError> {
        let sql = format!(
            "SELECT question, answer FROM exchanges {} ORDER BY id",
            if salient_only {
                "WHERE salient = 1"
            } else {
                ""
            }
        );
        let mut stmt = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        let mut n = 0;
        while let Some(r) = rows.next().map_err(|e| self.err(e))? {
            let q: String = r.get(0).map_err(|e| self.err(e))?;
            let a: String = r.get(1).map_err(|e| self.err(e))?;
            let line = serde_json::json!({"messages": [
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
            ]});
            writeln!(out, "{line}").map_err(|source| MemoryError::Io {
                path: self.path.clone(),
                source,
            })?;
            n += 1;
        }
        Ok(n)
    }

    /// Counts and means.
    pub fn stats(&self) -> Result<Stats, MemoryError> {
        let (n, salient, mean, first, last): (i64, i64, Option<f64>, Option<f64>, Option<f64>) = self
            .conn
            .query_row(
                "SELECT count(*), coalesce(sum(salient), 0), avg(salience), min(created_at), max(created_at) FROM exchanges",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .map_err(|e| self.err(e))?;
        let mut stmt = self
            .conn
            .prepare("SELECT snarc FROM exchanges")
            .map_err(|e| self.err(e))?;
        let mut sums = [0f64; 5];
        let mut count = 0usize;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.err(e))?;
        for s in rows {
            let s = s.map_err(|e| self.err(e))?;
            if let Ok(v) = serde_json::from_str::<SnarcScores>(&s) {
                for (acc, x) in sums.iter_mut().zip([
                    v.surprise.value,
                    v.novelty.value,
                    v.arousal.value,
                    v.reward.value,
                    v.conflict.value,
                ]) {
                    *acc += x;
                }
                count += 1;
            }
        }
        let bytes = [self.path.clone(), wal_path(&self.path)]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        Ok(Stats {
            path: self.path.display().to_string(),
            bytes,
            exchanges: n,
            salient,
            mean_salience: mean,
            mean_scores: (count > 0).then(|| sums.map(|s| s / count as f64)),
            first_last: first.zip(last).map(|(a, b)| [a, b]),
        })
    }

    /// Runs SQLite's integrity check; `Ok(())` when the file is sound.
    pub fn check_integrity(&self) -> Result<(), MemoryError> {
        let r: String = self
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        if r == "ok" {
            Ok(())
        } else {
            Err(MemoryError::Corrupt {
                path: self.path.clone(),
                detail: r,
            })
        }
    }
}

fn wal_path(p: &Path) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

fn classify(path: &Path, opts: &OpenOptions, e: rusqlite::Error) -> MemoryError {
    if let rusqlite::Error::SqliteFailure(f, ref msg) = e {
        match f.code {
            ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked => {
                return MemoryError::Locked {
                    path: path.to_owned(),
                    waited_ms: opts.busy_timeout.as_millis() as u64,
                }
            }
            ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt => {
                return MemoryError::Corrupt {
                    path: path.to_owned(),
                    detail: msg.clone().unwrap_or_else(|| f.to_string()),
                }
            }
            _ => {}
        }
    }
    MemoryError::Sql {
        path: path.to_owned(),
        source: e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiln-irp-mem-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d.join("memory.db")
    }

    fn put(m: &mut Memory, q: &str, a: &str) -> (i64, SnarcScores) {
        m.record(
            &SnarcConfig::default(),
            &NewExchange {
                source: "test",
                session: None,
                question: q,
                answer: a,
                irp: None,
            },
            None,
        )
        .unwrap()
    }

    #[test]
    fn store_list_search_export_stats() {
        let p = tmp("basic");
        let mut m = Memory::open(&p).unwrap();
        let (a, s1) = put(
            &mut m,
            "Why is the sky blue?",
            "Rayleigh scattering of sunlight.",
        );
        let (b, _) = put(&mut m, "How do bees make honey?", "They evaporate nectar.");
        assert!(b > a);
        assert_eq!(s1.surprise.value, 0.0, "first exchange");
        drop(m);
        let m = Memory::open(&p).unwrap();
        assert_eq!(m.index().entries.len(), 2, "the index is rebuilt on open");
        let l = m.list(10, false).unwrap();
        assert_eq!(l.iter().map(|x| x.id).collect::<Vec<_>>(), [b, a]);
        assert_eq!(l[1].question, "Why is the sky blue?");
        let s = m.search("blue sky", 5).unwrap();
        assert_eq!(s[0].0.id, a);
        let s = m.search("nectar", 5).unwrap();
        assert_eq!(s[0].0.id, b);
        let mut out = Vec::new();
        assert_eq!(m.export_jsonl(&mut out, false).unwrap(), 2);
        let text = String::from_utf8(out).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["messages"][0]["role"], "user");
        assert_eq!(
            first["messages"][1]["content"],
            "Rayleigh scattering of sunlight."
        );
        let st = m.stats().unwrap();
        assert_eq!(st.exchanges, 2);
        assert!(st.mean_salience.is_some() && st.bytes > 0);
        m.check_integrity().unwrap();
        assert_eq!(m.recent_questions(1).unwrap(), ["How do bees make honey?"]);
        assert_eq!(
            m.recent_exchanges(5).unwrap(),
            [
                (
                    "Why is the sky blue?".to_owned(),
                    "Rayleigh scattering of sunlight.".to_owned()
                ),
                (
                    "How do bees make honey?".to_owned(),
                    "They evaporate nectar.".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn salient_filter() {
        let p = tmp("salient");
        let mut m = Memory::open(&p).unwrap();
        let cfg = SnarcConfig {
            threshold: 0.99,
            ..Default::default()
        };
        let ex = NewExchange {
            source: "test",
            session: Some("s1"),
            question: "hi",
            answer: "hello",
            irp: None,
        };
        m.record(&cfg, &ex, None).unwrap();
        let (id, _) = put(
            &mut m,
            "Why do stars twinkle at night?",
            "Air turbulence bends their light.",
        );
        let sal = m.list(10, true).unwrap();
        assert_eq!(sal.iter().map(|x| x.id).collect::<Vec<_>>(), [id]);
        let mut out = Vec::new();
        assert_eq!(m.export_jsonl(&mut out, true).unwrap(), 1);
        assert_eq!(m.list(10, false).unwrap()[1].session.as_deref(), Some("s1"));
    }

    #[test]
    fn corrupt_file_is_named() {
        let p = tmp("corrupt");
        std::fs::write(&p, vec![0x42u8; 8192]).unwrap();
        let e = Memory::open(&p).unwrap_err();
        assert!(matches!(e, MemoryError::Corrupt { .. }), "{e}");
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
    }

    #[test]
    fn locked_file_is_named() {
        let p = tmp("locked");
        let mut m = Memory::open_with(
            &p,
            OpenOptions {
                busy_timeout: Duration::from_millis(50),
                ..Default::default()
            },
        )
        .unwrap();
        let other = Connection::open(&p).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE;").unwrap();
        let scored = m.score(
            &SnarcConfig::default(),
            &Exchange {
                question: "q",
                answer: "a",
                final_energy: None,
                recent_questions: &[],
            },
        );
        let e = m
            .store(
                &NewExchange {
                    source: "test",
                    session: None,
                    question: "q",
                    answer: "a",
                    irp: None,
                },
                &scored,
            )
            .unwrap_err();
        assert!(matches!(e, MemoryError::Locked { .. }), "{e}");
        assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        other.execute_batch("ROLLBACK;").unwrap();
    }

    #[test]
    fn default_path_honours_kiln_memory() {
        // Only read the variable; tests run in parallel, so it is not set here.
        let p = default_path();
        assert!(p.ends_with("memory.db") || std::env::var_os("KILN_MEMORY").is_some());
    }
}
