//! Child processes that cannot outlive the process that started them.

use tokio::process::Command;

/// Makes the child started by `command` receive SIGKILL when the thread that spawns it ends,
/// which for the lab, tests and benches means when their process ends, however it ends: a
/// lab killed with SIGKILL leaves no services or nats-server behind, which a `Drop` could
/// not promise. Spawn from a long-lived thread (a tokio worker or the main thread), not
/// from a blocking-pool thread, which may end while the child is still wanted.
#[allow(unsafe_code)]
pub fn die_with_parent(command: &mut Command) -> &mut Command {
    let parent = rustix::process::getpid();
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe work is allowed: it makes two raw system calls (prctl, getppid)
    // through rustix, which neither allocates nor takes locks.
    unsafe {
        command.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // The parent may have died between fork and prctl; then no signal will come.
            if rustix::process::getppid() != Some(parent) {
                return Err(std::io::Error::other(
                    "the parent process has already exited",
                ));
            }
            Ok(())
        })
    }
}
