//! What the lab's end-to-end tests share: running the lab binary, and `lab up` on free ports.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::{Child, Command};

/// The lab binary on `data_dir`, killed when dropped.
pub fn lab(data_dir: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lab"));
    command
        .arg("--data-dir")
        .arg(data_dir)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Starts `lab up` on free ports and waits for its state file.
pub async fn up(data_dir: &Path) -> (Child, Value) {
    let mut child = lab(data_dir)
        .args(["up", "--ephemeral-ports"])
        .stdout(Stdio::null())
        .spawn()
        .expect("the lab starts");
    let state_file = data_dir.join("lab.json");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(text) = std::fs::read_to_string(&state_file)
            && let Ok(state) = serde_json::from_str::<Value>(&text)
        {
            return (child, state);
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("lab up exited before it was up: {status}");
        }
        assert!(Instant::now() < deadline, "lab up never came up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a lab command to its end and returns what it printed; fails the test with both of
/// its outputs when it did not succeed.
pub async fn succeeds(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .await
        .unwrap_or_else(|error| panic!("{what} cannot run: {error}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A JSON file the lab wrote.
pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|error| panic!("{} is not JSON: {error}", path.display()))
}

/// Alive means present and not a zombie waiting for a reaper (a zombie has closed its files
/// and sockets).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let after_name = stat.rsplit_once(')')?.1.trim_start().to_owned();
            after_name.chars().next()
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}
