//! A service binary as an operator meets it: its `--help`, and its refusal of bad flags.

use tokio::process::Command;

/// The binary's `--help` text, which it must print successfully.
pub async fn help_text(binary: &str) -> String {
    let output = Command::new(binary)
        .arg("--help")
        .output()
        .await
        .expect("the binary runs");
    assert!(output.status.success(), "{binary} --help failed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Fails unless `help` mentions every one of `needles`.
pub fn assert_mentions(help: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            help.contains(needle),
            "--help should mention {needle}:\n{help}"
        );
    }
}

/// Runs the binary with `args`, which it must refuse as a usage error (exit 64, EX_USAGE);
/// returns what it printed on stderr.
pub async fn usage_error(binary: &str, args: &[&str]) -> String {
    let output = Command::new(binary)
        .args(args)
        .output()
        .await
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(64), "{binary} {args:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}
