//! `keybound scan`: finds planted keys anywhere (text, a 200 KB minified line, a binary file,
//! stdin) and prints `file:line: <key id>`, never the secret; finds nothing in near-misses;
//! skips `.git` and `target`; needs no database.

use std::path::Path;

use keybound::keys::{ApiKey, KeyEnv};

use crate::helpers::run_binary;

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A 200 KB single line of minified-looking JavaScript with `middle` in the middle.
fn minified(middle: &str) -> Vec<u8> {
    let filler = "var a=function(b){return b*2};";
    let half = filler.repeat(100 * 1024 / filler.len());
    format!("{half}const k=\"{middle}\";{half}").into_bytes()
}

/// Ways to be almost a key, none of which is one.
fn near_misses() -> Vec<(String, &'static str)> {
    let k = ApiKey::generate(KeyEnv::Prod).expose().to_owned();
    let flip = |i: usize| {
        let mut b = k.clone().into_bytes();
        b[i] = if b[i] == b'a' { b'b' } else { b'a' };
        String::from_utf8(b).unwrap()
    };
    vec![
        (flip(k.len() - 1), "last checksum char changed"),
        (flip(30), "a secret char changed"),
        (flip(10), "an id char changed"),
        (k[..k.len() - 1].to_owned(), "truncated"),
        (format!("{k}7"), "glued to one more char"),
        (format!("x{k}"), "glued to a char before"),
        (k.replacen("sk_prod_", "sk_live_", 1), "unknown env"),
        (k.replacen("sk_", "SK_", 1), "uppercase prefix"),
        (k.replacen("sk_prod_", "ak_prod_", 1), "public id prefix"),
        (
            format!("sk_prod_{}", "A".repeat(61)),
            "right shape, random checksum",
        ),
    ]
}

#[tokio::test]
async fn planted_keys_are_found_and_named_by_id_only() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let keys: Vec<ApiKey> = (0..6)
        .map(|i| ApiKey::generate([KeyEnv::Prod, KeyEnv::Test, KeyEnv::Dev][i % 3]))
        .collect();
    let mut binary = vec![0u8, 159, 146, 150, 0, b'\n', 0xff, 0xfe, 0, 0, b'\n'];
    binary.extend_from_slice(keys[2].expose().as_bytes());
    binary.extend_from_slice(&[0, 1, 2, 3]);
    write(
        &root,
        "config.env",
        format!("# settings\nAPI_KEY={}\n", keys[0].expose()).as_bytes(),
    );
    write(&root, "web/app.min.js", &minified(keys[1].expose()));
    write(&root, "assets/blob.bin", &binary);
    write(
        &root,
        "docs/deep/notes.md",
        format!(
            "{}\nsecond line\n\"{}\"",
            keys[3].expose(),
            keys[4].expose()
        )
        .as_bytes(),
    );
    // Never scanned: git's store and build output.
    write(&root, ".git/config", keys[5].expose().as_bytes());
    write(&root, "target/debug/out.txt", keys[5].expose().as_bytes());
    write(&root, "nested/target/x", keys[5].expose().as_bytes());

    let out = run_binary(dir.path(), &["scan", root.to_str().unwrap()], None).await;

    assert_eq!(out.code, 1, "keys found: exit 1: {out:?}");
    let r = root.display();
    let mut want = vec![
        format!("{r}/assets/blob.bin:3: {} (keybound API key)", keys[2].id()),
        format!("{r}/config.env:2: {} (keybound API key)", keys[0].id()),
        format!(
            "{r}/docs/deep/notes.md:1: {} (keybound API key)",
            keys[3].id()
        ),
        format!(
            "{r}/docs/deep/notes.md:3: {} (keybound API key)",
            keys[4].id()
        ),
        format!("{r}/web/app.min.js:1: {} (keybound API key)", keys[1].id()),
    ];
    let mut got: Vec<String> = out.stdout.lines().map(str::to_owned).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{out:?}");
    let all = out.all();
    for k in &keys {
        assert!(!all.contains(k.expose()), "the plaintext is never printed");
        assert!(!all.contains(&k.expose()[20..63]), "nor its secret part");
    }
    assert!(
        !all.contains(&keys[5].id().to_string()),
        ".git and target are skipped"
    );

    // The default path is the working directory; a file can be named directly.
    let here = run_binary(&root, &["scan"], None).await;
    assert_eq!(here.code, 1);
    assert!(
        here.stdout
            .contains(&format!("./config.env:2: {}", keys[0].id())),
        "{here:?}"
    );
    let one = run_binary(&root, &["scan", "config.env"], None).await;
    assert_eq!(
        one.stdout,
        format!("config.env:2: {} (keybound API key)\n", keys[0].id())
    );

    // No database was opened or created.
    for d in [dir.path(), root.as_path()] {
        assert!(
            !d.join("keybound-data").exists(),
            "scan created a database in {}",
            d.display()
        );
    }
}

#[tokio::test]
async fn near_misses_are_not_reported() {
    let dir = tempfile::tempdir().unwrap();
    let misses = near_misses();
    let mut text = String::new();
    for (i, (m, why)) in misses.iter().enumerate() {
        text.push_str(&format!("{why}: {m}\n"));
        write(dir.path(), &format!("case{i}.txt"), m.as_bytes());
    }
    write(dir.path(), "all.txt", text.as_bytes());
    let joined: Vec<&str> = misses.iter().map(|(m, _)| m.as_str()).collect();
    write(dir.path(), "min.js", &minified(&joined.join(";")));
    let mut binary = vec![0u8; 64];
    binary.extend_from_slice(misses[0].0.as_bytes());
    binary.push(0);
    write(dir.path(), "bad.bin", &binary);

    let out = run_binary(dir.path(), &["scan", "."], None).await;

    assert_eq!(out.code, 0, "nothing found: exit 0: {out:?}");
    assert_eq!(out.stdout, "", "{out:?}");
    // Each near-miss on its own, so one cannot hide another.
    for (i, (_, why)) in misses.iter().enumerate() {
        let one = run_binary(dir.path(), &["scan", &format!("case{i}.txt")], None).await;
        assert_eq!((one.code, one.stdout.as_str()), (0, ""), "{why}");
    }
}

#[tokio::test]
async fn stdin_and_unreadable_paths() {
    let dir = tempfile::tempdir().unwrap();
    let key = ApiKey::generate(KeyEnv::Test);
    let input = format!("line one\nexport KEY={}\n", key.expose());
    let out = run_binary(dir.path(), &["scan", "-"], Some(input.as_bytes())).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        out.stdout,
        format!("-:2: {} (keybound API key)\n", key.id())
    );
    assert!(!out.all().contains(key.expose()));

    let clean = run_binary(dir.path(), &["scan", "-"], Some(b"nothing to see\n")).await;
    assert_eq!((clean.code, clean.stdout.as_str()), (0, ""));

    let missing = run_binary(dir.path(), &["scan", "does-not-exist"], None).await;
    assert_eq!(
        missing.code, 2,
        "an unreadable path is an error: {missing:?}"
    );
    assert!(missing.stderr.contains("does-not-exist"), "{missing:?}");

    // Found keys win over errors: exit 1.
    write(dir.path(), "leak.txt", key.expose().as_bytes());
    let both = run_binary(dir.path(), &["scan", "does-not-exist", "leak.txt"], None).await;
    assert_eq!(both.code, 1, "{both:?}");
}
