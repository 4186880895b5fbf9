//! The command-line subcommands other than `serve`: key, device and signing-key management,
//! audit verification and the leak scanner. They open the database directly, so they work
//! without a running server; servers see their changes within the validation cache lifetime.
//!
//! Exit codes: 0 success; 1 a finding (`scan` found a key, `audit verify` found a bad row);
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

use crate::config::{Cli, Command, DevicesCommand, KeysCommand};
use crate::error::{Error, Result};

/// Exit code for errors (`main` uses the same one for errors returned from here).
const EXIT_ERROR: u8 = 2;

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
        Command::Keys(cmd) => keys::run(&*crate::store::open(&url).await?, cmd).await,
        Command::Devices(cmd) => devices::run(&*crate::store::open(&url).await?, cmd).await,
        Command::Audit(cmd) => audit::run(&*crate::store::open(&url).await?, cmd).await,
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

/// What a command acts on, to name it in a `NOT_FOUND` message.
fn subject(cmd: &Command) -> Option<String> {
    let key = |id: &str| Some(format!("key {id}"));
    match cmd {
        Command::Keys(
            KeysCommand::Show { id, .. }
            | KeysCommand::Revoke { id, .. }
            | KeysCommand::Suspend { id, .. }
            | KeysCommand::Resume { id, .. }
            | KeysCommand::Rotate { id, .. },
        ) => key(id),
        Command::Devices(DevicesCommand::List { key_id, .. }) => key(key_id),
        Command::Devices(
            DevicesCommand::Revoke { device_id, .. } | DevicesCommand::Approve { device_id, .. },
        ) => Some(format!("device {device_id}")),
        _ => None,
    }
}
