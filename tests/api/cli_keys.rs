//! The key lifecycle through the real `keybound` binary: human tables and `--json`, the
//! plaintext printed exactly once, errors on stderr with a non-zero exit.

use keybound::keys::ApiKey;
use serde_json::{Value, json};

use crate::helpers::{CliOutput, TestDb, cli, expect_json, key_body, now, spawn_app};
use crate::on_both_backends;

on_both_backends!(
    create_list_show,
    plaintext_is_printed_exactly_once_by_create_and_rotate,
    suspend_resume_revoke,
    rotate_and_its_grace_period,
    errors_go_to_stderr_with_a_non_zero_exit,
    cli_and_api_share_the_database,
);

/// `keys create --json` with the given extra flags; returns the JSON answer.
async fn create(db: &TestDb, name: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "keys",
        "create",
        "--name",
        name,
        "--scopes",
        "read:users write:orders",
    ];
    args.extend_from_slice(extra);
    args.push("--json");
    cli(db, &args).await.ok().json()
}

/// Every `sk_…` token in `text` that parses as a key.
fn plaintexts(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| ApiKey::parse(w).is_ok())
        .map(str::to_owned)
        .collect()
}

async fn create_list_show(db: TestDb) {
    let v = create(
        &db,
        "ci runner",
        &[
            "--env",
            "test",
            "--expires-in-days",
            "7",
            "--rate-limit-per-minute",
            "60",
            "--allowed-ip",
            "10.0.0.0/8",
            "--allowed-ip",
            "::1/128",
            "--allowed-origin",
            "https://app.example.com",
            "--max-devices",
            "2",
            "--limited-scopes",
            "read:users",
            "--trust-on-enroll",
            "--description",
            "builds",
        ],
    )
    .await;
    let key = ApiKey::parse(v["key"].as_str().unwrap()).expect("valid key");
    let id = v["key_id"].as_str().unwrap().to_owned();
    assert_eq!(key.id().as_str(), id);
    assert!(id.starts_with("ak_test_"));
    assert_eq!(v["name"], "ci runner");
    assert_eq!(v["description"], "builds");
    assert_eq!(v["scopes"], json!(["read:users", "write:orders"]));
    assert_eq!(v["limited_scopes"], json!(["read:users"]));
    assert_eq!(v["allowed_ips"], json!(["10.0.0.0/8", "::1/128"]));
    assert_eq!(v["allowed_origins"], json!(["https://app.example.com"]));
    assert_eq!(v["rate_limit_per_minute"], 60);
    assert_eq!(v["max_devices"], 2);
    assert_eq!(v["trust_on_enroll"], true);
    assert_eq!(
        v["expires_at"].as_i64().unwrap() - v["created_at"].as_i64().unwrap(),
        7 * 86_400
    );
    let human = cli(
        &db,
        &["keys", "create", "--name", "second", "--scopes", "read:x"],
    )
    .await
    .ok();
    let second = plaintexts(&human.stdout);
    assert_eq!(second.len(), 1, "{human:?}");
    let second_id = ApiKey::parse(&second[0]).unwrap().id().to_string();
    assert!(human.stdout.contains(&second_id));

    let list = cli(&db, &["keys", "list", "--json"]).await.ok().json();
    let keys = list["keys"].as_array().expect("{\"keys\": [...]}");
    let mut ids: Vec<&str> = keys.iter().map(|k| k["key_id"].as_str().unwrap()).collect();
    ids.sort();
    let mut want = vec![id.as_str(), second_id.as_str()];
    want.sort();
    assert_eq!(ids, want);
    assert_eq!(
        list.as_object().unwrap().len(),
        1,
        "one object, only `keys`"
    );

    let table = cli(&db, &["keys", "list"]).await.ok();
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "header + 2 rows: {}", table.stdout);
    assert!(lines[0].starts_with("KEY_ID"), "{}", table.stdout);
    assert_eq!(
        lines[0].find("NAME"),
        lines[1].find("ci runner").or(lines[1].find("second"))
    );
    for k in [&id, &second_id] {
        assert!(table.stdout.contains(k.as_str()));
    }

    let shown = cli(&db, &["keys", "show", &id, "--json"]).await.ok().json();
    let mut created = v.clone();
    created.as_object_mut().unwrap().remove("key");
    assert_eq!(shown, created, "show = create answer minus the plaintext");
    let shown = cli(&db, &["keys", "show", &id]).await.ok();
    for want in [
        id.as_str(),
        "ci runner",
        "read:users write:orders",
        "10.0.0.0/8",
        "active",
    ] {
        assert!(shown.stdout.contains(want), "{want} in {}", shown.stdout);
    }

    let empty_db = TestDb::sqlite().await;
    let none = cli(&empty_db, &["keys", "list", "--json"])
        .await
        .ok()
        .json();
    assert_eq!(none, json!({"keys": []}));
}

async fn plaintext_is_printed_exactly_once_by_create_and_rotate(db: TestDb) {
    let json_create = cli(
        &db,
        &["keys", "create", "--name", "a", "--scopes", "s", "--json"],
    )
    .await
    .ok();
    let human_create = cli(&db, &["keys", "create", "--name", "b", "--scopes", "s"])
        .await
        .ok();
    let a = json_create.json();
    let a_key = a["key"].as_str().unwrap().to_owned();
    let b_key = plaintexts(&human_create.stdout)
        .pop()
        .expect("plaintext printed");
    let a_id = a["key_id"].as_str().unwrap().to_owned();
    let b_id = ApiKey::parse(&b_key).unwrap().id().to_string();

    let json_rotate = cli(&db, &["keys", "rotate", &a_id, "--json"]).await.ok();
    let human_rotate = cli(&db, &["keys", "rotate", &b_id]).await.ok();
    let a2_key = json_rotate.json()["key"].as_str().unwrap().to_owned();
    let b2_key = plaintexts(&human_rotate.stdout)
        .pop()
        .expect("plaintext printed");

    let cases = [
        (&json_create, &a_key, "create --json"),
        (&human_create, &b_key, "create"),
        (&json_rotate, &a2_key, "rotate --json"),
        (&human_rotate, &b2_key, "rotate"),
    ];
    for (out, key, why) in cases {
        let all = out.all();
        assert_eq!(all.matches(key.as_str()).count(), 1, "{why}: {all}");
        assert_eq!(
            plaintexts(&all),
            vec![key.clone()],
            "{why}: no other key printed"
        );
        let secret = &key[key.len() - 49..key.len() - 6];
        assert_eq!(
            all.matches(secret).count(),
            1,
            "{why}: the secret part, once"
        );
    }
    assert!(human_rotate.stdout.contains(&b_id) && human_rotate.stdout.contains("until"));
}

async fn suspend_resume_revoke(db: TestDb) {
    let id = create(&db, "k", &[]).await["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let status = |out: CliOutput| out.ok().json()["status"].clone();

    assert_eq!(
        status(cli(&db, &["keys", "suspend", &id, "--json"]).await),
        "suspended"
    );
    assert_eq!(
        cli(&db, &["keys", "show", &id, "--json"]).await.ok().json()["status"],
        "suspended"
    );
    let resumed = cli(&db, &["keys", "resume", &id]).await.ok();
    assert!(
        resumed.stdout.contains(&format!("Resumed {id}")),
        "{resumed:?}"
    );
    assert!(resumed.stdout.contains("active"));
    let revoked = cli(
        &db,
        &["keys", "revoke", &id, "--reason", "laptop stolen", "--json"],
    )
    .await
    .ok()
    .json();
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(revoked["status_reason"], "laptop stolen");

    let missing_reason = cli(&db, &["keys", "revoke", &id]).await;
    assert_eq!(
        missing_reason.code, 2,
        "clap requires --reason: {missing_reason:?}"
    );
    for cmd in ["resume", "suspend"] {
        let out = cli(&db, &["keys", cmd, &id]).await;
        assert_eq!(out.code, 2, "{cmd} after revoke: {out:?}");
        assert!(out.stderr.contains("revoked"), "{cmd}: {out:?}");
        assert!(out.stdout.is_empty(), "{cmd}: errors only on stderr");
    }
}

async fn rotate_and_its_grace_period(db: TestDb) {
    let old = create(&db, "rotating", &["--env", "dev", "--max-devices", "4"]).await;
    let old_id = old["key_id"].as_str().unwrap();

    let new = cli(
        &db,
        &["keys", "rotate", old_id, "--grace-seconds", "0", "--json"],
    )
    .await
    .ok()
    .json();
    let new_key = ApiKey::parse(new["key"].as_str().unwrap()).expect("valid new key");
    assert_eq!(new["key_id"], new_key.id().as_str());
    assert_ne!(new["key_id"], old["key_id"]);
    assert_eq!(new["rotated_from"], old_id);
    assert_eq!(new["max_devices"], 4);
    assert_eq!(new["scopes"], old["scopes"]);
    assert!(new_key.expose().starts_with("sk_dev_"));

    let old_now = cli(&db, &["keys", "show", old_id, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(old_now["rotated_to"], new["key_id"]);
    assert!(
        old_now["expires_at"].as_i64().unwrap() <= now(),
        "no grace: expired"
    );
    assert_eq!(new["old_key_expires_at"], old_now["expires_at"]);
    let human = cli(&db, &["keys", "show", old_id]).await.ok();
    assert!(human.stdout.contains("expired"), "{}", human.stdout);

    let again = cli(&db, &["keys", "rotate", old_id]).await;
    assert_ne!(again.code, 0, "{again:?}");
    assert!(again.stderr.contains("error:"), "{again:?}");
    assert!(
        plaintexts(&again.all()).is_empty(),
        "a refused rotation prints no key"
    );

    let graced = create(&db, "graced", &[]).await;
    let graced_id = graced["key_id"].as_str().unwrap();
    let before = now();
    cli(
        &db,
        &[
            "keys",
            "rotate",
            graced_id,
            "--grace-seconds",
            "3600",
            "--json",
        ],
    )
    .await
    .ok();
    let e = cli(&db, &["keys", "show", graced_id, "--json"])
        .await
        .ok()
        .json()["expires_at"]
        .as_i64()
        .unwrap();
    assert!((before + 3600..=now() + 3600).contains(&e), "{e}");
}

async fn errors_go_to_stderr_with_a_non_zero_exit(db: TestDb) {
    let cases: [(&[&str], &str, &str); 7] = [
        (
            &["keys", "show", "ak_test_AAAAAAAAAAAA"],
            "key ak_test_AAAAAAAAAAAA not found",
            "unknown key",
        ),
        (
            &["keys", "suspend", "ak_test_AAAAAAAAAAAA"],
            "not found",
            "suspend unknown key",
        ),
        (
            &["keys", "rotate", "nope"],
            "key nope not found",
            "not a key id",
        ),
        (
            &["keys", "create", "--name", "x", "--scopes", ""],
            "scopes must not be empty",
            "empty scopes",
        ),
        (
            &[
                "keys",
                "create",
                "--name",
                "x",
                "--scopes",
                "a",
                "--allowed-ip",
                "300.0.0.1/8",
            ],
            "invalid value",
            "bad CIDR",
        ),
        (
            &[
                "keys", "create", "--name", "x", "--scopes", "a", "--env", "live",
            ],
            "invalid value",
            "bad env",
        ),
        (
            &["devices", "list", "ak_test_AAAAAAAAAAAA"],
            "key ak_test_AAAAAAAAAAAA not found",
            "devices of unknown key",
        ),
    ];
    for (args, want, why) in cases {
        let out = cli(&db, args).await;
        assert_eq!(out.code, 2, "{why}: {out:?}");
        assert!(out.stdout.is_empty(), "{why}: {out:?}");
        assert!(out.stderr.contains(want), "{why}: {out:?}");
    }
    let list = cli(&db, &["keys", "list", "--json"]).await.ok().json();
    assert_eq!(
        list["keys"],
        json!([]),
        "no failed command left a key behind"
    );
}

async fn cli_and_api_share_the_database(db: TestDb) {
    let app = spawn_app(&db).await;
    let from_api = app.create_key(key_body("from api")).await;
    let api_id = from_api["key_id"].as_str().unwrap();
    let from_cli = create(&db, "from cli", &[]).await;
    let cli_id = from_cli["key_id"].as_str().unwrap();

    // The server sees the CLI's key at once, and the CLI the server's.
    assert_eq!(app.get_key(cli_id).await["name"], "from cli");
    let shown = cli(&db, &["keys", "show", api_id, "--json"])
        .await
        .ok()
        .json();
    assert_eq!(shown["name"], "from api");

    cli(&db, &["keys", "suspend", api_id]).await.ok();
    assert_eq!(app.get_key(api_id).await["status"], "suspended");
    let listed = expect_json(app.admin_get("/keys").await, reqwest::StatusCode::OK).await;
    assert_eq!(listed["keys"].as_array().unwrap().len(), 2);
    app.stop().await;
}
