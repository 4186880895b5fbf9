//! The command-line subcommands other than `serve`: key, device and signing-key management,
//! audit verification and the leak scanner. They open the database directly, so they work
//! without a running server; servers see their changes within the validation cache lifetime.
//!
//! Exit codes: 0 success; 1 a finding (`scan` found a key, `audit verify` found a bad row or a
//! truncation past its checkpoint);
//! 2 an error, written to stderr as `error: <message> (<CODE>)`. With `--json`, stdout holds
//! exactly one JSON object and nothing else.

/// `keybound audit …`
pub mod audit;
/// `keybound devices …`
pub mod devices;
/// `keybound lab` and `keybound bench`: the sibling binaries that implement them.
pub mod external;
/// `keybound keys …`
pub mod keys;
/// Tables, `key value` blocks and JSON.
pub mod output;
/// `keybound scan`
pub mod scan;
/// `keybound signing-keys …`
pub mod signing_keys;

use std::process::ExitCode;
use std::sync::Arc;

use crate::config::{Cli, Command, DevicesCommand, KeysCommand, MasterKeyArgs};
use crate::error::{Error, Result};
use crate::integrity::Integrity;
use crate::tokens::signing::MasterKey;

/// Exit code for errors (`main` uses the same one for errors returned from here).
const EXIT_ERROR: u8 = 2;

/// The exit status of a command's result, for the `main` of every binary (`keybound`,
/// `keybound-lab`, `keybound-bench`): an error is printed to stderr with its cause and code,
/// and exits 2. The operator at the terminal gets the cause an HTTP client never sees (a 5xx
/// body says nothing internal; here nobody else is listening).
pub fn exit_status(result: Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            match std::error::Error::source(&e) {
                Some(cause) => eprintln!("error: {e}: {cause} ({})", e.code()),
                None => eprintln!("error: {e} ({})", e.code()),
            }
            ExitCode::from(2)
        }
    }
}

/// Runs a parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> Result<ExitCode> {
    let url = cli.database_url();
    // The benchmark fills a database of its own: only an explicit `--database-url` (never the
    // default file or `DATABASE_URL`) may name one.
    let explicit_url = cli.database_url.as_ref().map(|u| u.as_str().to_owned());
    let subject = subject(&cli.command);
    let result = match cli.command {
        Command::Serve(args) => {
            crate::telemetry::init(args.effective_log_format());
            for flag in crate::config::secrets_on_command_line(std::env::args()) {
                tracing::warn!(
                    flag,
                    "a secret given on the command line is visible to other local users in the \
                     process list; use its environment variable or file option instead"
                );
            }
            let store = crate::store::open(&url).await?;
            if args.profile == crate::config::Profile::Prod {
                for path in crate::store::loose_permissions(&url) {
                    tracing::warn!(
                        path,
                        "database path is accessible to group or others; \
                         chmod 700 the data directory and 600 the database files"
                    );
                }
            }
            crate::server::serve(*args, store).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            let store = crate::store::open(&url).await?;
            println!("migrations applied ({})", store.backend());
            Ok(ExitCode::SUCCESS)
        }
        // The scanner runs in pre-commit hooks and CI jobs that have no database: it must
        // not open (and so create) one.
        Command::Scan(args) => Ok(scan::run(args)),
        Command::Bench(p) => external::run("keybound-bench", p.args, explicit_url.as_deref()),
        // The lab makes its own temporary databases; it never opens the configured one.
        Command::Lab(p) => external::run("keybound-lab", p.args, None),
        Command::SigningKeys(cmd) => {
            signing_keys::run(&*crate::store::open(&url).await?, cmd).await
        }
        Command::Keys(args) => {
            let store = crate::store::open(&url).await?;
            load_integrity(&*store, &args.master).await?;
            keys::run(&*store, args.command).await
        }
        Command::Devices(args) => {
            let store = crate::store::open(&url).await?;
            load_integrity(&*store, &args.master).await?;
            devices::run(&*store, args.command).await
        }
        Command::Audit(args) => {
            let store = crate::store::open(&url).await?;
            let keys = load_integrity(&*store, &args.master)
                .await?
                .ok_or_else(|| {
                    Error::InvalidRequest(format!(
                        "checking the audit log needs the master key: pass --master-key (or \
                     KEYBOUND_MASTER_KEY), or --master-key-file (default {})",
                        args.master.master_key_file.display()
                    ))
                })?;
            audit::run(&*store, &keys, args.command).await
        }
    };
    match (result, subject) {
        // `not found` alone does not say what was missing; the command line does.
        (Err(Error::NotFound), Some(subject)) => {
            eprintln!("error: {subject} not found (NOT_FOUND)");
            Ok(ExitCode::from(EXIT_ERROR))
        }
        (result, _) => result,
    }
}

/// Loads the database's integrity keys into `store` ([`crate::integrity`]) when the master
/// key is at hand (given, or its file exists; the file is never created here: a new master key
/// would not open the servers' database). Without it the store stays read-only in effect:
/// listing works, while creating a key or writing an audit row fails naming the master key.
async fn load_integrity(
    store: &dyn crate::store::Store,
    args: &MasterKeyArgs,
) -> Result<Option<Arc<Integrity>>> {
    use secrecy::ExposeSecret;
    let master = match &args.master_key {
        Some(b64) => MasterKey::from_base64(b64.expose_secret()).map_err(|_| {
            Error::InvalidRequest("KEYBOUND_MASTER_KEY must be 32 bytes in base64".into())
        })?,
        None if args.master_key_file.is_file() => {
            MasterKey::read_existing_file(&args.master_key_file).map_err(|e| {
                Error::InvalidRequest(format!(
                    "master key file {}: {e}",
                    args.master_key_file.display()
                ))
            })?
        }
        None => return Ok(None),
    };
    crate::integrity::load_or_enable(store, &master, crate::state::now())
        .await
        .map(Some)
}

/// What a command acts on, to name it in a `NOT_FOUND` message.
fn subject(cmd: &Command) -> Option<String> {
    let key = |id: &str| Some(format!("key {id}"));
    match cmd {
        Command::Keys(args) => match &args.command {
            KeysCommand::Show { id, .. }
            | KeysCommand::Revoke { id, .. }
            | KeysCommand::Suspend { id, .. }
            | KeysCommand::Resume { id, .. }
            | KeysCommand::Rotate { id, .. } => key(id),
            _ => None,
        },
        Command::Devices(args) => match &args.command {
            DevicesCommand::List { key_id, .. } => key(key_id),
            DevicesCommand::Revoke { device_id, .. }
            | DevicesCommand::Approve { device_id, .. } => Some(format!("device {device_id}")),
        },
        _ => None,
    }
}
