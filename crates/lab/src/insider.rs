//! H insider: someone with the admin token, the CLI and write access to the database edits or
//! deletes audit rows, and tries to read a key's plaintext through every command and endpoint.

use std::path::Path;

use base64::Engine;
use secrecy::ExposeSecret;
use serde_json::json;
use sqlx::{Column, Connection, Row, SqliteConnection};

use super::report::{Outcome, Section};
use super::target::{LabDevice, Target, phone};
use keybound::audit::{self, Verdict};
use keybound::error::{Error, Result};
use keybound::keys::ApiKey;

/// One tampering attempt on the audit log.
#[derive(Debug, Clone)]
pub struct Tamper {
    /// What was done.
    pub attack: String,
    /// What `audit verify` said.
    pub verdict: String,
    /// Whether the chain itself caught it.
    pub detected_by_chain: bool,
    /// Whether comparing with a recorded head caught it.
    pub detected_by_head: bool,
    /// The CLI's exit code, when the binary was available.
    pub cli_exit: Option<i32>,
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
    /// A key row written straight into the database: (usable, audit verify intact).
    pub minted: Option<(bool, bool)>,
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
            let out = run_cli(bin, db, &args)?;
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
        tampering = tamper(db, binary).await?;
        minted = Some(mint_key(t, db, &device_id).await?);
    }
    Ok(Insider {
        tampering,
        reads,
        hash_seen_in,
        minted,
    })
}

fn run_cli(bin: &Path, db: &str, args: &[&str]) -> Result<(i32, String)> {
    let out = std::process::Command::new(bin)
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

/// Edits, deletes and truncates audit rows behind keybound's back, asks `audit verify` each
/// time (the library, and the CLI when there is a binary), and puts every row back after.
async fn tamper(db: &str, binary: Option<&Path>) -> Result<Vec<Tamper>> {
    let store = keybound::store::open(db).await?;
    let (rows, head) = match audit::verify(&*store).await? {
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
    let mut c = SqliteConnection::connect(db)
        .await
        .map_err(Error::internal)?;
    let mid = rows / 2;
    let mut out = Vec::new();
    let judge = async |attack: &str| -> Result<Tamper> {
        let verdict = audit::verify(&*store).await?;
        let cli_exit = match binary {
            Some(b) => Some(run_cli(b, db, &["audit", "verify"])?.0),
            None => None,
        };
        let (text, by_chain, by_head) = match &verdict {
            Verdict::Intact { rows: n, head_hash } => (
                format!("intact, {n} rows, head {}…", &head_hash[..12]),
                false,
                *head_hash != head,
            ),
            Verdict::Broken { seq, reason } => (format!("row {seq}: {reason}"), true, true),
        };
        Ok(Tamper {
            attack: attack.into(),
            verdict: text,
            detected_by_chain: by_chain,
            detected_by_head: by_head,
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

    exec(&mut c, "DELETE FROM audit_log WHERE seq = ?", mid).await?;
    out.push(judge(&format!("delete row {mid} of {rows}")).await?);
    put_back(&mut c, &original).await?;

    let last = read_row(&mut c, rows).await?;
    exec(&mut c, "DELETE FROM audit_log WHERE seq = ?", rows).await?;
    out.push(judge(&format!("delete the newest row ({rows}): truncation")).await?);
    put_back(&mut c, &last).await?;

    match audit::verify(&*store).await? {
        Verdict::Intact { head_hash, .. } if head_hash == head => Ok(out),
        other => Err(Error::internal(format!(
            "the audit log could not be restored: {other:?}"
        ))),
    }
}

/// Writes a key row straight into the database with a secret the insider chose: does the
/// server accept it, and does `audit verify` notice? The row is removed afterwards.
async fn mint_key(t: &Target, db: &str, _device: &str) -> Result<(bool, bool)> {
    let store = keybound::store::open(db).await?;
    let minted = ApiKey::generate(keybound::keys::KeyEnv::Test);
    let (_, template) = t.create_key(json!({"trust_on_enroll": true})).await?;
    let mut c = SqliteConnection::connect(db)
        .await
        .map_err(Error::internal)?;
    sqlx::query(
        "INSERT INTO api_keys (key_id, env, name, description, secret_hash, scopes, limited_scopes, \
         rate_limit_per_minute, allowed_ips, allowed_origins, max_devices, trust_on_enroll, status, \
         status_reason, status_changed_at, created_at, expires_at, last_used_at, rotated_from, rotated_to) \
         SELECT ?, env, 'minted', description, ?, scopes, limited_scopes, rate_limit_per_minute, \
         allowed_ips, allowed_origins, max_devices, trust_on_enroll, status, status_reason, \
         status_changed_at, created_at, expires_at, NULL, NULL, NULL FROM api_keys WHERE key_id = ?",
    )
    .bind(minted.id().as_str())
    .bind(minted.secret_hash().to_vec())
    .bind(&template)
    .execute(&mut c)
    .await
    .map_err(Error::internal)?;
    let r = t
        .exchange(
            minted.expose(),
            &LabDevice::new(),
            &json!({}),
            Target::client_ip(48, 0, 2),
        )
        .await?;
    let intact = matches!(audit::verify(&*store).await?, Verdict::Intact { .. });
    sqlx::query("DELETE FROM api_keys WHERE key_id = ?")
        .bind(minted.id().as_str())
        .execute(&mut c)
        .await
        .map_err(Error::internal)?;
    Ok((r.ok(), intact))
}

impl Insider {
    /// Every edit and deletion inside the chain was detected, and no plaintext was found.
    pub fn holds(&self) -> bool {
        self.plaintext_found() == 0
            && self
                .tampering
                .iter()
                .all(|t| t.detected_by_chain || t.detected_by_head)
    }

    /// Sources that showed a plaintext or secret part.
    pub fn plaintext_found(&self) -> usize {
        self.reads.iter().filter(|(_, f)| *f).count()
    }

    /// The report section.
    pub fn section(&self) -> Section {
        let mut s = Section::new("H insider");
        for t in &self.tampering {
            let outcome = if t.detected_by_chain {
                Outcome::Detected
            } else if t.detected_by_head {
                Outcome::Limited
            } else {
                Outcome::NotBlocked
            };
            s.row(
                t.attack.clone(),
                if t.detected_by_chain {
                    "hash chain: `keybound audit verify`"
                } else {
                    "only the recorded head (last seq and hash) shows it"
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
                "hash chain",
                Outcome::Skipped,
                "no database access (--url target)",
            );
        }
        s.row(
            format!(
                "read a key's plaintext through {} commands, endpoints and the database",
                self.reads.len()
            ),
            "only SHA-256(secret) is stored; plaintext shown once at creation/rotation",
            if self.plaintext_found() == 0 {
                Outcome::Blocked
            } else {
                Outcome::NotBlocked
            },
            format!(
                "plaintext obtainable from {} of {} sources; hash visible in: {}",
                self.plaintext_found(),
                self.reads.len(),
                if self.hash_seen_in.is_empty() {
                    "none".into()
                } else {
                    self.hash_seen_in.join(", ")
                }
            ),
        );
        if let Some((usable, intact)) = self.minted {
            s.row(
                "write a key row with a chosen secret straight into the database",
                "none: database write access is outside what the audit chain covers",
                if usable && intact {
                    Outcome::NotBlocked
                } else {
                    Outcome::Detected
                },
                format!(
                    "minted key {} at the token endpoint; audit verify {} — known limit",
                    if usable { "accepted" } else { "refused" },
                    if intact {
                        "intact (not detected)"
                    } else {
                        "broken"
                    }
                ),
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
            "Every edit and deletion inside the chain is named by `audit verify`. Removing the \
             newest rows leaves a shorter chain that is still consistent: only comparing the \
             head that `audit verify` prints with a copy kept elsewhere (a ticket, a log \
             shipper) shows it — the audit module documents this. An insider who can write the \
             database can also add a key row of their own choosing, which no audit row records: \
             the audit log proves what keybound did, not what was done to its database. \
             Database write access has to be guarded like the master key. Every row the lab \
             tampered with was put back and the chain verified intact afterwards."
                .to_owned(),
        );
        s.check(
            self.holds(),
            "tampering went unnoticed or a plaintext was found",
        );
        s
    }
}
