//! H insider: someone with the admin token, the CLI and write access to the database (but not
//! the master key) edits, recomputes or deletes audit rows, writes key rows of their own, and
//! tries to read a key's plaintext through every command and endpoint.

use std::path::Path;

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use sqlx::{Column, Connection, Row, SqliteConnection};

use super::report::{Outcome, Section};
use super::target::{LabDevice, Target, phone};
use keybound::audit::{self, Checkpoint, Verdict};
use keybound::error::{Error, Result};
use keybound::integrity::Integrity;
use keybound::keys::ApiKey;
use keybound::store::{AuditEntry, Store};

/// One tampering attempt on the audit log.
#[derive(Debug, Clone)]
pub struct Tamper {
    /// What was done.
    pub attack: String,
    /// What `audit verify --checkpoint` said.
    pub verdict: String,
    /// Whether the MAC chain itself caught it (`audit verify`).
    pub detected_by_chain: bool,
    /// Whether the checkpoint taken before caught it (`audit verify --checkpoint`).
    pub detected_by_checkpoint: bool,
    /// The CLI's exit code for `audit verify --checkpoint`, when the binary was available.
    pub cli_exit: Option<i32>,
}

/// Key rows written straight into the database by the insider.
#[derive(Debug, Clone)]
pub struct Minted {
    /// A row with a secret of their choice and its SHA-256 (all they can compute): the answer.
    pub chosen_secret: String,
    /// A row under a new id carrying a real key's stored hash, presented with that key's
    /// secret: the answer.
    pub copied_hash: String,
}

impl Minted {
    /// Both rows were refused as unknown keys.
    pub fn refused(&self) -> bool {
        [&self.chosen_secret, &self.copied_hash]
            .iter()
            .all(|a| a.as_str() == "401 INVALID_API_KEY")
    }
}

/// Scenario H's measurements.
#[derive(Debug, Clone)]
pub struct Insider {
    /// Audit tampering attempts (empty without database access).
    pub tampering: Vec<Tamper>,
    /// Places searched for the plaintext: (source, found).
    pub reads: Vec<(String, bool)>,
    /// Where the hash of the secret appears (expected: the database only).
    pub hash_seen_in: Vec<String>,
    /// Key rows written straight into the database, and what the server answered.
    pub minted: Option<Minted>,
}

/// H: with the target's database (the lab's own server) and binary, when there are.
pub async fn insider(t: &Target, binary: Option<&Path>) -> Result<Insider> {
    // Arrange: a key with a device, rotated, suspended and resumed: audit rows and state.
    let (key, key_id) = t.create_key(json!({"trust_on_enroll": true})).await?;
    let key = key.expose_secret().to_owned();
    let r = t
        .exchange(
            &key,
            &LabDevice::new(),
            &phone("ios", "iPhone15,2", "h-install", "ja-JP", "Asia/Tokyo"),
            Target::client_ip(48, 0, 1),
        )
        .await?;
    let device_id = r.body["device_id"].as_str().unwrap_or("").to_owned();
    let rotated = t
        .admin_post(
            &format!("/keys/{key_id}/rotate"),
            &json!({"grace_seconds": 600}),
        )
        .await?;
    let new_key = rotated.body["key"].as_str().unwrap_or("").to_owned();
    let new_id = rotated.body["key_id"].as_str().unwrap_or("").to_owned();
    t.admin_post(&format!("/keys/{new_id}/suspend"), &json!({}))
        .await?;
    t.admin_post(&format!("/keys/{new_id}/resume"), &json!({}))
        .await?;

    // Every read an insider has.
    let mut outputs: Vec<(String, String)> = Vec::new();
    for path in [
        "/keys".to_owned(),
        format!("/keys/{key_id}"),
        format!("/keys/{new_id}"),
        format!("/keys/{key_id}/devices"),
        "/audit".into(),
        "/alerts".into(),
    ] {
        outputs.push((
            format!("GET /admin/v1{path}"),
            t.admin_get(&path).await?.text,
        ));
    }
    for path in [
        "/.well-known/jwks.json",
        "/.well-known/oauth-authorization-server",
        "/v1/revocations",
        "/metrics",
        "/healthz",
        "/readyz",
    ] {
        let r = t.send(t.client().get(t.url(path))).await?;
        outputs.push((format!("GET {path}"), r.text));
    }
    if let (Some(bin), Some(db)) = (binary, &t.database_url) {
        for args in [
            vec!["keys", "list"],
            vec!["keys", "list", "--json"],
            vec!["keys", "show", &key_id],
            vec!["keys", "show", &new_id, "--json"],
            vec!["devices", "list", &key_id],
            vec!["devices", "list", &key_id, "--json"],
            vec!["audit", "verify", "--json"],
            vec!["signing-keys", "list"],
        ] {
            let out = run_cli(bin, db, t.master_key(), &args)?;
            outputs.push((format!("keybound {}", args.join(" ")), out.1));
        }
    }
    let mut db_dump = None;
    if let Some(db) = &t.database_url {
        db_dump = Some(dump_database(db).await?);
    }
    let mut reads = Vec::new();
    let mut hash_seen_in = Vec::new();
    let forms = |k: &str| -> Vec<String> {
        let secret = k[k.len() - 49..k.len() - 6].to_owned();
        vec![k.to_owned(), secret]
    };
    let hashes: Vec<String> = [&key, &new_key]
        .iter()
        .filter_map(|k| ApiKey::parse(k).ok())
        .flat_map(|k| {
            let h = k.secret_hash();
            [
                audit::to_hex(&h),
                base64::engine::general_purpose::STANDARD.encode(h),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(h),
            ]
        })
        .collect();
    for (source, text) in outputs.iter().chain(db_dump.iter()) {
        let found = [&key, &new_key]
            .iter()
            .flat_map(|k| forms(k))
            .any(|f| text.contains(&f));
        reads.push((source.clone(), found));
        if hashes.iter().any(|h| text.contains(h.as_str())) {
            hash_seen_in.push(source.clone());
        }
    }

    let mut tampering = Vec::new();
    let mut minted = None;
    if let Some(db) = &t.database_url {
        let master = t
            .master_key()
            .ok_or_else(|| Error::internal("the lab's own server has a master key"))?;
        let store = keybound::store::open(db).await?;
        let keys = integrity(&*store, master).await?;
        tampering = tamper(&*store, &keys, db, master, binary).await?;
        minted = Some(mint_key(t, db, &device_id).await?);
    }
    Ok(Insider {
        tampering,
        reads,
        hash_seen_in,
        minted,
    })
}

/// The integrity keys, as the operator holding the master key has them.
async fn integrity(store: &dyn Store, master: &SecretString) -> Result<std::sync::Arc<Integrity>> {
    let master = keybound::tokens::signing::MasterKey::from_base64(master.expose_secret())
        .map_err(Error::internal)?;
    keybound::integrity::load_or_enable(store, &master, keybound::state::now()).await
}

fn run_cli(
    bin: &Path,
    db: &str,
    master: Option<&SecretString>,
    args: &[&str],
) -> Result<(i32, String)> {
    let mut cmd = std::process::Command::new(bin);
    if let Some(m) = master {
        cmd.env("KEYBOUND_MASTER_KEY", m.expose_secret());
    }
    let out = cmd
        .arg("--database-url")
        .arg(db)
        .args(args)
        .env_remove("KEYBOUND_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .output()
        .map_err(Error::internal)?;
    Ok((
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// Every table, every row, every column as text (blobs as hex and as lossy text), as an
/// insider with a copy of the database file would read it. Also returns the tables' names.
async fn dump_database(url: &str) -> Result<(String, String)> {
    let mut c = SqliteConnection::connect(url)
        .await
        .map_err(Error::internal)?;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&mut c)
            .await
            .map_err(Error::internal)?;
    let mut text = String::new();
    for table in &tables {
        // Table names come from the database's own catalog, not from input.
        let rows = sqlx::query(&format!("SELECT * FROM \"{table}\""))
            .fetch_all(&mut c)
            .await
            .map_err(Error::internal)?;
        for row in rows {
            for (i, col) in row.columns().iter().enumerate() {
                let v = if let Ok(Some(s)) = row.try_get::<Option<String>, _>(i) {
                    s
                } else if let Ok(Some(b)) = row.try_get::<Option<Vec<u8>>, _>(i) {
                    format!("{} {}", audit::to_hex(&b), String::from_utf8_lossy(&b))
                } else if let Ok(Some(n)) = row.try_get::<Option<i64>, _>(i) {
                    n.to_string()
                } else if let Ok(Some(f)) = row.try_get::<Option<f64>, _>(i) {
                    f.to_string()
                } else {
                    String::new()
                };
                text.push_str(&format!("{table}.{}={v}\n", col.name()));
            }
        }
    }
    Ok((
        (format!("the database file ({} tables, every column)", tables.len())),
        text,
    ))
}

/// An audit row, every column, to put back exactly what was taken out.
#[derive(Clone)]
struct RawAudit {
    seq: i64,
    at: i64,
    actor: String,
    action: String,
    target: Option<String>,
    ip: Option<String>,
    details: String,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
}

impl RawAudit {
    fn entry(&self) -> Result<AuditEntry> {
        Ok(AuditEntry {
            at: self.at,
            actor: self.actor.clone(),
            action: self.action.clone(),
            target: self.target.clone(),
            ip: self.ip.clone(),
            details: serde_json::from_str(&self.details).map_err(Error::internal)?,
        })
    }
}

async fn read_row(c: &mut SqliteConnection, seq: i64) -> Result<RawAudit> {
    let r = sqlx::query(
        "SELECT seq, at, actor, action, target, ip, details, prev_hash, hash FROM audit_log WHERE seq = ?",
    )
    .bind(seq)
    .fetch_one(&mut *c)
    .await
    .map_err(Error::internal)?;
    Ok(RawAudit {
        seq: r.get(0),
        at: r.get(1),
        actor: r.get(2),
        action: r.get(3),
        target: r.get(4),
        ip: r.get(5),
        details: r.get(6),
        prev_hash: r.get(7),
        hash: r.get(8),
    })
}

async fn put_back(c: &mut SqliteConnection, row: &RawAudit) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, action, target, ip, details, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(row.seq)
    .bind(row.at)
    .bind(&row.actor)
    .bind(&row.action)
    .bind(&row.target)
    .bind(&row.ip)
    .bind(&row.details)
    .bind(&row.prev_hash)
    .bind(&row.hash)
    .execute(&mut *c)
    .await
    .map_err(Error::internal)?;
    Ok(())
}

async fn exec(c: &mut SqliteConnection, sql: &str, seq: i64) -> Result<()> {
    sqlx::query(sql)
        .bind(seq)
        .execute(&mut *c)
        .await
        .map_err(Error::internal)?;
    Ok(())
}

/// Edits, recomputes, deletes and truncates audit rows behind keybound's back, asks
/// `audit verify` each time (the library, and the CLI with `--checkpoint` when there is a
/// binary) against a checkpoint taken first, and puts every row back after.
async fn tamper(
    store: &dyn Store,
    keys: &Integrity,
    db: &str,
    master: &SecretString,
    binary: Option<&Path>,
) -> Result<Vec<Tamper>> {
    let (rows, head) = match audit::verify(store, keys).await? {
        Verdict::Intact { rows, head_hash } => (rows, head_hash),
        Verdict::Broken { seq, reason } => {
            return Err(Error::internal(format!(
                "the audit log was already broken at row {seq}: {reason}"
            )));
        }
    };
    if rows < 3 {
        return Err(Error::internal("too few audit rows to tamper with"));
    }
    // The operator's checkpoint, kept outside the database.
    let head_mac = audit::from_hex(&head).ok_or_else(|| Error::internal("head is not hex"))?;
    let checkpoint = Checkpoint::new(keys, rows, &head_mac, keybound::state::now());
    let file = tempfile::NamedTempFile::new().map_err(Error::internal)?;
    std::fs::write(
        file.path(),
        serde_json::to_vec(&checkpoint).map_err(Error::internal)?,
    )
    .map_err(Error::internal)?;
    let file_arg = file.path().display().to_string();
    let mut c = SqliteConnection::connect(db)
        .await
        .map_err(Error::internal)?;
    let mid = rows / 2;
    let mut out = Vec::new();
    let judge = async |attack: &str| -> Result<Tamper> {
        let plain = audit::verify(store, keys).await?;
        let verdict = audit::verify_against(store, keys, Some((rows, &head_mac))).await?;
        let cli_exit = match binary {
            Some(b) => Some(
                run_cli(
                    b,
                    db,
                    Some(master),
                    &["audit", "verify", "--checkpoint", &file_arg],
                )?
                .0,
            ),
            None => None,
        };
        let text = match &verdict {
            Verdict::Intact { rows: n, head_hash } => {
                format!("intact, {n} rows, head {}…", &head_hash[..12])
            }
            Verdict::Broken { seq, reason } => format!("row {seq}: {reason}"),
        };
        Ok(Tamper {
            attack: attack.into(),
            verdict: text,
            detected_by_chain: matches!(plain, Verdict::Broken { .. }),
            detected_by_checkpoint: matches!(verdict, Verdict::Broken { .. }),
            cli_exit,
        })
    };

    let original = read_row(&mut c, mid).await?;
    sqlx::query("UPDATE audit_log SET actor = 'someone-else' WHERE seq = ?")
        .bind(mid)
        .execute(&mut c)
        .await
        .map_err(Error::internal)?;
    out.push(judge(&format!("edit row {mid} of {rows} (actor)")).await?);
    exec(&mut c, "DELETE FROM audit_log WHERE seq = ?", mid).await?;
    put_back(&mut c, &original).await?;

    sqlx::query("UPDATE audit_log SET details = '{\"reason\":\"nothing to see\"}' WHERE seq = ?")
        .bind(mid)
        .execute(&mut c)
        .await
        .map_err(Error::internal)?;
    out.push(judge(&format!("edit row {mid} of {rows} (details)")).await?);
    exec(&mut c, "DELETE FROM audit_log WHERE seq = ?", mid).await?;
    put_back(&mut c, &original).await?;

    // The attack a plain hash chain cannot see: edit a row and recompute every hash after it.
    let tail = read_rows(&mut c, mid, rows).await?;
    let mut prev = original.prev_hash.clone();
    for (i, row) in tail.iter().enumerate() {
        let mut forged = row.clone();
        if i == 0 {
            forged.actor = "someone-else".into();
        }
        forged.prev_hash.clone_from(&prev);
        forged.hash = audit::chain_hash(&prev, forged.seq, &forged.entry()?).to_vec();
        prev.clone_from(&forged.hash);
        exec(&mut c, "DELETE FROM audit_log WHERE seq = ?", row.seq).await?;
        put_back(&mut c, &forged).await?;
    }
    out.push(
        judge(&format!(
            "edit row {mid} of {rows} and recompute every later hash (SHA-256)"
        ))
        .await?,
    );
    for row in &tail {
        exec(&mut c, "DELETE FROM audit_log WHERE seq = ?", row.seq).await?;
        put_back(&mut c, row).await?;
    }

    exec(&mut c, "DELETE FROM audit_log WHERE seq = ?", mid).await?;
    out.push(judge(&format!("delete row {mid} of {rows}")).await?);
    put_back(&mut c, &original).await?;

    let last = read_row(&mut c, rows).await?;
    exec(&mut c, "DELETE FROM audit_log WHERE seq = ?", rows).await?;
    out.push(judge(&format!("delete the newest row ({rows}): truncation")).await?);
    put_back(&mut c, &last).await?;

    match audit::verify(store, keys).await? {
        Verdict::Intact { head_hash, .. } if head_hash == head => Ok(out),
        other => Err(Error::internal(format!(
            "the audit log could not be restored: {other:?}"
        ))),
    }
}

async fn read_rows(c: &mut SqliteConnection, from: i64, to: i64) -> Result<Vec<RawAudit>> {
    let mut rows = Vec::new();
    for seq in from..=to {
        rows.push(read_row(c, seq).await?);
    }
    Ok(rows)
}

/// Writes key rows straight into the database, as an insider without the master key can:
/// one with a secret they chose (stored as its SHA-256, the only hash they can compute), one
/// under a new id carrying a real key's stored hash (presented with that key's secret). Both
/// must be refused as unknown keys. The rows are removed afterwards.
async fn mint_key(t: &Target, db: &str, _device: &str) -> Result<Minted> {
    let minted = ApiKey::generate(keybound::keys::KeyEnv::Test);
    let (template_key, template) = t.create_key(json!({"trust_on_enroll": true})).await?;
    let mut c = SqliteConnection::connect(db)
        .await
        .map_err(Error::internal)?;
    let insert = "INSERT INTO api_keys (key_id, env, name, description, secret_hash, scopes, \
         limited_scopes, rate_limit_per_minute, allowed_ips, allowed_origins, max_devices, \
         trust_on_enroll, status, status_reason, status_changed_at, created_at, expires_at, \
         last_used_at, rotated_from, rotated_to) \
         SELECT ?, env, 'minted', description, COALESCE(?, secret_hash), scopes, limited_scopes, \
         rate_limit_per_minute, allowed_ips, allowed_origins, max_devices, trust_on_enroll, \
         status, status_reason, status_changed_at, created_at, expires_at, NULL, NULL, NULL \
         FROM api_keys WHERE key_id = ?";
    sqlx::query(insert)
        .bind(minted.id().as_str())
        .bind(Some(minted.secret_hash().to_vec()))
        .bind(&template)
        .execute(&mut c)
        .await
        .map_err(Error::internal)?;
    let chosen = t
        .exchange(
            minted.expose(),
            &LabDevice::new(),
            &json!({}),
            Target::client_ip(48, 0, 2),
        )
        .await?;

    // The template's secret under a fresh id, with the row copying the template's hash.
    let template_key = template_key.expose_secret().to_owned();
    let env = ApiKey::parse(&template_key)
        .map_err(|_| Error::internal("the server made an invalid key"))?
        .env();
    let secret = &template_key[template_key.len() - 49..template_key.len() - 6];
    let fresh = ApiKey::generate(env);
    let fresh_id = &fresh.id().as_str()[format!("ak_{env}_").len()..];
    let body = format!("sk_{env}_{fresh_id}{secret}");
    let copied_key = format!(
        "{body}{}",
        keybound::keys::format::checksum(body.as_bytes())
    );
    sqlx::query(insert)
        .bind(fresh.id().as_str())
        .bind(None::<Vec<u8>>)
        .bind(&template)
        .execute(&mut c)
        .await
        .map_err(Error::internal)?;
    let copied = t
        .exchange(
            &copied_key,
            &LabDevice::new(),
            &json!({}),
            Target::client_ip(48, 0, 3),
        )
        .await?;
    for id in [minted.id().as_str(), fresh.id().as_str()] {
        sqlx::query("DELETE FROM api_keys WHERE key_id = ?")
            .bind(id)
            .execute(&mut c)
            .await
            .map_err(Error::internal)?;
    }
    Ok(Minted {
        chosen_secret: chosen.summary(),
        copied_hash: copied.summary(),
    })
}

impl Insider {
    /// Every edit, recomputation and deletion was detected, every minted key row refused,
    /// and no plaintext was found.
    pub fn holds(&self) -> bool {
        self.plaintext_found() == 0
            && self
                .tampering
                .iter()
                .all(|t| t.detected_by_chain || t.detected_by_checkpoint)
            && self.minted.as_ref().is_none_or(Minted::refused)
    }

    /// Sources that showed a plaintext or secret part.
    pub fn plaintext_found(&self) -> usize {
        self.reads.iter().filter(|(_, f)| *f).count()
    }

    /// The report section.
    pub fn section(&self) -> Section {
        let mut s = Section::new("H insider");
        for t in &self.tampering {
            let outcome = if t.detected_by_chain || t.detected_by_checkpoint {
                Outcome::Detected
            } else {
                Outcome::NotBlocked
            };
            s.row(
                t.attack.clone(),
                if t.detected_by_chain {
                    "HMAC chain under the master key: `keybound audit verify`"
                } else {
                    "checkpoint: `keybound audit verify --checkpoint FILE`"
                },
                outcome,
                format!(
                    "{}{}",
                    t.verdict,
                    t.cli_exit
                        .map_or(String::new(), |c| format!("; CLI exit {c}"))
                ),
            );
        }
        if self.tampering.is_empty() {
            s.row(
                "edit or delete audit rows",
                "HMAC chain and checkpoint",
                Outcome::Skipped,
                "no database access (--url target)",
            );
        }
        s.row(
            format!(
                "read a key's plaintext through {} commands, endpoints and the database",
                self.reads.len()
            ),
            "only HMAC(key id, SHA-256(secret)) is stored; plaintext shown once at creation/rotation",
            if self.plaintext_found() == 0 {
                Outcome::Blocked
            } else {
                Outcome::NotBlocked
            },
            format!(
                "plaintext obtainable from {} of {} sources; SHA-256 of a secret visible in: {}",
                self.plaintext_found(),
                self.reads.len(),
                if self.hash_seen_in.is_empty() {
                    "none".into()
                } else {
                    self.hash_seen_in.join(", ")
                }
            ),
        );
        if let Some(m) = &self.minted {
            let outcome = |answer: &str| {
                if answer == "401 INVALID_API_KEY" {
                    Outcome::Blocked
                } else {
                    Outcome::NotBlocked
                }
            };
            s.row(
                "write a key row with a chosen secret straight into the database",
                "key hashes are HMAC'd under a key derived from the master key",
                outcome(&m.chosen_secret),
                format!("token endpoint answered {}", m.chosen_secret),
            );
            s.row(
                "copy a real key's stored hash onto a new key id",
                "the HMAC binds the key id",
                outcome(&m.copied_hash),
                format!("token endpoint answered {}", m.copied_hash),
            );
        }
        s.note(format!(
            "Sources searched for the plaintext and its secret part: {}.",
            self.reads
                .iter()
                .map(|(s, found)| if *found {
                    format!("**{s} (FOUND)**")
                } else {
                    s.clone()
                })
                .collect::<Vec<_>>()
                .join("; ")
        ));
        s.note(
            "The insider can write the database but has no master key. Audit rows are chained \
             with HMAC-SHA256 under a key derived from it, so an edited row cannot be given a \
             valid MAC, and recomputing the chain after it (what a plain hash chain allows) \
             fails too. Removing the newest rows leaves a shorter chain that is still \
             consistent: the checkpoint the operator took before (`keybound audit checkpoint`, \
             kept outside the database) shows it. Key hashes are HMAC'd under another derived \
             key and bound to the key id, so a row with a chosen secret, or with a real key's \
             hash under another id, is refused with INVALID_API_KEY. What stays open: changing \
             the settings (scopes, status, expiry) of an existing key row, which no MAC covers; \
             see docs/design.md. Every row the lab tampered with was put back and the chain \
             verified intact afterwards."
                .to_owned(),
        );
        s.check(
            self.holds(),
            "tampering went unnoticed, a minted key row was accepted, or a plaintext was found",
        );
        s
    }
}
