//! The command line without a server: `check-config`.

use std::process::Command;

use registry_proxy_testkit::registry_proxy_binary;

/// `check-config` prints the effective configuration with its secrets
/// masked and every ignored key; a configuration that would stop the start
/// exits 2 naming the key; nothing is started either way.
#[test]
fn check_config_prints_the_plan_masked_or_what_is_refused() {
    let dir = tempfile::tempdir().expect("dir");
    let good = dir.path().join("good.yml");
    std::fs::write(
        &good,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:5000\n  secret: not-needed\nproxy:\n  remoteurl: https://registry-1.docker.io\n  username: someone\n  password: hunter2-secret\n",
            dir.path().join("data").display()
        ),
    )
    .expect("write");
    let out = Command::new(registry_proxy_binary())
        .args(["check-config", good.to_str().expect("utf-8")])
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("127.0.0.1:5000"), "{stdout}");
    assert!(stdout.contains("someone"), "{stdout}");
    assert!(
        !stdout.contains("hunter2-secret"),
        "a secret was printed: {stdout}"
    );
    assert!(stdout.contains("ignored: http.secret"), "{stdout}");

    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        "version: 0.1\nstorage:\n  inmemory: {}\nhttp:\n  tls:\n    certificate: /c.pem\n    key: /k.pem\n",
    )
    .expect("write");
    let out = Command::new(registry_proxy_binary())
        .args(["check-config", bad.to_str().expect("utf-8")])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("http.tls"), "{said}");
}

/// Shell completions and the man page come from the command-line
/// definitions: they name every subcommand.
#[test]
fn completions_and_the_man_page_name_every_subcommand() {
    let run = |args: &[&str]| {
        let out = Command::new(registry_proxy_binary())
            .args(args)
            .output()
            .expect("run");
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let bash = run(&["completions", "bash"]);
    let man = run(&["man"]);
    assert!(
        man.starts_with(".ie") || man.contains(".TH"),
        "not roff: {man}"
    );
    for subcommand in ["serve", "scrub", "gc", "check-config"] {
        assert!(bash.contains(subcommand), "completions lack {subcommand}");
        // roff spells a hyphen `\-`.
        let roff = subcommand.replace('-', "\\-");
        assert!(man.contains(&roff), "the man page lacks {subcommand}");
    }
}
